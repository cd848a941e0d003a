import gzip
import struct

import numpy as np
import pytest

from betavae.core import data, idx
from betavae.uses import api, cli


def test_round_trip_images_and_labels(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 9], dtype=np.uint8)
    (tmp_path / "i").write_bytes(idx.encode(images))
    (tmp_path / "l").write_bytes(idx.encode(labels))
    assert np.array_equal(idx.read_images(tmp_path / "i"), images)
    assert np.array_equal(idx.read_labels(tmp_path / "l"), labels)


def test_header_is_the_canonical_magic_and_big_endian_sizes():
    data = idx.encode(np.zeros((5, 28, 28), dtype=np.uint8))
    assert data[:16] == struct.pack(">IIII", 0x803, 5, 28, 28)
    assert idx.encode(np.zeros(7, dtype=np.uint8))[:8] == struct.pack(">II", 0x801, 7)


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "truncated (2 bytes, no IDX header)"),
    (b"\x00", "truncated (1 byte, no IDX header)"),
    (b"", "empty, not an IDX file"),
    (struct.pack(">IIII", 0x0D03, 1, 28, 28) + bytes(784 * 4),
     "an IDX file of float values (it starts with bytes 00 00 0d 03); MNIST's hold unsigned bytes (type 0x08)"),
    (struct.pack(">III", 0x802, 28, 28) + bytes(784),
     "an IDX file of 2 dimensions (it starts with bytes 00 00 08 02); expected 3 (images: 00 00 08 03) or 1"),
    (struct.pack(">II", 0x803, 1), "truncated header"),
    (struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(784), "needs 1584"),
    (struct.pack(">IIII", 0x803, 1, 28, 28) + bytes(785), "801 bytes, but its header (1, 28, 28) needs 800"),
])
def test_corrupt_data_is_rejected_with_the_file_named(data, message):
    with pytest.raises(idx.IdxError) as error:
        idx.decode(data, "t10k")
    assert str(error.value).startswith("t10k: ") and message in str(error.value)


NOT_IDX = ("not an IDX file (it starts with bytes {}; an IDX file of unsigned bytes, as MNIST's are, starts with "
           "00 00 08)")


@pytest.mark.parametrize("data, start, hint", [
    ("# β-VAE on MNIST\n".encode(), "23 20 ce b2", ""),  # a README
    (b"\x89PNG\r\n\x1a\n" + bytes(20), "89 50 4e 47", ""),  # an image
    (b"\xff\xd8\xff\xe0" + bytes(20), "ff d8 ff e0", ""),
    (gzip.compress(idx.encode(np.zeros((1, 28, 28), dtype=np.uint8)), mtime=0), "1f 8b 08 00",
     "; it is gzip-compressed: unpack it first (gunzip -k)"),  # MNIST's download, not unpacked
    (b"ab", "61 62", ""),
    (b"\x00\x01\x08\x03" + bytes(20), "00 01 08 03", ""),
])
def test_a_file_of_another_kind_is_said_to_be_not_an_idx_file(data, start, hint):
    with pytest.raises(idx.IdxError) as error:
        idx.decode(data, "file")
    assert str(error.value) == f"file: {NOT_IDX.format(start)}{hint}"


def test_every_idx_entry_point_says_a_text_file_is_not_an_idx_file(tmp_path, repo_root, make_mnist, capsys):
    """The `betavae` command, the API and the stages' data loading read IDX through the one reader."""
    readme = repo_root / "README.md"
    message = f"{readme}: {NOT_IDX.format(' '.join(f'{byte:02x}' for byte in readme.read_bytes()[:4]))}"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["digits", "--images", str(readme), "--out-dir", str(tmp_path / "digits")])
    assert exit_.value.code == 1 and capsys.readouterr().err == f"betavae: error: {message}\n"
    with pytest.raises(idx.IdxError) as error:
        api.read_images(readme)
    assert str(error.value) == message
    make_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / idx.TRAIN_LABELS).write_text("labels\n")
    with pytest.raises(idx.IdxError, match=r"train-labels-idx1-ubyte: not an IDX file \(it starts with bytes 6c 61"):
        data.load_train_val(tmp_path / "mnist", seed=0, limit=0, val_size=10, binarize="none")


def test_the_header_starts_with_the_magic_the_reader_checks():
    assert idx.encode(np.zeros((1, 28, 28), dtype=np.uint8)).startswith(idx.MAGIC + b"\x03")


def test_wrong_shapes_and_labels_are_rejected(tmp_path):
    (tmp_path / "small").write_bytes(idx.encode(np.zeros((2, 27, 28), dtype=np.uint8)))
    with pytest.raises(idx.IdxError, match=r"shape \(2, 27, 28\), expected \(N, 28, 28\)"):
        idx.read_images(tmp_path / "small")
    (tmp_path / "labels").write_bytes(idx.encode(np.array([1, 12], dtype=np.uint8)))
    with pytest.raises(idx.IdxError, match="label 12 outside 0-9"):
        idx.read_labels(tmp_path / "labels")
    with pytest.raises(idx.IdxError, match="expected \\(N,\\) labels"):
        idx.read_labels(tmp_path / "small")


def test_files_that_hold_nothing_are_named(tmp_path, capsys):
    (tmp_path / "images").write_bytes(idx.encode(np.zeros((0, 28, 28), dtype=np.uint8)))
    (tmp_path / "labels").write_bytes(idx.encode(np.zeros((0,), dtype=np.uint8)))
    with pytest.raises(idx.IdxError, match=r"images: holds no images$"):
        idx.read_images(tmp_path / "images")
    with pytest.raises(idx.IdxError, match=r"labels: holds no labels$"):
        idx.read_labels(tmp_path / "labels")
    with pytest.raises(SystemExit):  # the command that writes one PNG a digit no longer says "0 digits written"
        cli.main(["digits", "--images", str(tmp_path / "images"), "--out-dir", str(tmp_path / "digits")])
    assert capsys.readouterr().err.strip().endswith("images: holds no images")
    assert not (tmp_path / "digits").exists()
