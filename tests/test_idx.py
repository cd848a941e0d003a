import struct

import numpy as np
import pytest

from betavae.core import idx
from betavae.uses import cli


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
    (struct.pack(">IIII", 0x0D03, 1, 28, 28) + bytes(784), "bad magic number 0x00000d03"),
    (struct.pack(">II", 0x803, 1), "truncated header"),
    (struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(784), "needs 1584"),
    (struct.pack(">IIII", 0x803, 1, 28, 28) + bytes(785), "801 bytes, but its header (1, 28, 28) needs 800"),
])
def test_corrupt_data_is_rejected_with_the_file_named(data, message):
    with pytest.raises(idx.IdxError) as error:
        idx.decode(data, "t10k")
    assert str(error.value).startswith("t10k: ") and message in str(error.value)


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
