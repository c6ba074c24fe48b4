"""Parsers on the real mirrored files, and on generated Omniglot / Histopathology files."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from trainables.data import DATASETS, SPLIT_SEED, Checksum, DatasetSpec, Splits, fetch, load_dataset
from trainables.data.parsers import read_amat, read_idx_gz, read_pickle
from trainables.errors import DataError

# --------------------------------------------------------------------------- helpers


def _with_checksum(spec: DatasetSpec, checksum: Checksum, **changes: object) -> DatasetSpec:
    """``spec`` (one source file) with that file's checksum replaced, plus other field changes."""
    (source,) = spec.files
    return dataclasses.replace(spec, files=(dataclasses.replace(source, checksum=checksum),), **changes)


def _images(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return x.reshape(-1, *shape)


def _assert_binary(x: np.ndarray) -> None:
    assert set(np.unique(x).tolist()) <= {0.0, 1.0}


def _check_common(splits: Splits, sizes: tuple[int, int, int], dim: int) -> None:
    for array, n in zip((splits.train, splits.val, splits.test), sizes, strict=True):
        assert array.shape == (n, dim)
        assert array.dtype == np.float32
        assert array.flags.c_contiguous
        assert 0.0 <= array.min() and array.max() <= 1.0


def _extent(mask_1d: np.ndarray) -> int:
    idx = np.flatnonzero(mask_1d)
    return int(idx[-1] - idx[0] + 1)


# --------------------------------------------------------------------------- mirrored datasets


def test_static_mnist(data_cache: Path) -> None:
    s = load_dataset("static_mnist", cache=data_cache)
    _check_common(s, (50000, 10000, 10000), 784)
    for array in (s.train, s.val, s.test):
        _assert_binary(array)
    first = _images(s.train, (28, 28))[0]
    rows, cols = np.nonzero(first)
    assert 9 < cols.mean() < 19 and 9 < rows.mean() < 19  # mass in the centre
    assert first[:, :2].sum() == first[:, -2:].sum() == first[:2].sum() == first[-2:].sum() == 0
    # upright (not transposed): the mean digit is taller than it is wide
    mean = _images(s.train, (28, 28)).mean(axis=0)
    assert _extent(mean.mean(axis=1) > 0.05) > _extent(mean.mean(axis=0) > 0.05)


def test_dynamic_mnist(data_cache: Path) -> None:
    s = load_dataset("dynamic_mnist", cache=data_cache)
    assert s.spec.dynamic
    _check_common(s, (50000, 10000, 10000), 784)
    values = np.unique(s.train)
    assert len(values) > 2  # probabilities, binarized by the trainer each epoch
    np.testing.assert_allclose(values * 255, np.round(values * 255), atol=1e-3)
    _assert_binary(s.val)
    _assert_binary(s.test)
    # val/test are Bernoulli draws of the gray values, not a threshold
    assert abs(s.test.mean() - 0.1325) < 0.005
    mean = _images(s.train, (28, 28)).mean(axis=0)
    assert _extent(mean.mean(axis=1) > 0.05) > _extent(mean.mean(axis=0) > 0.05)


def test_dynamic_mnist_split_is_first_50000_and_last_10000(data_cache: Path, shared_datasets: Path) -> None:
    raw = read_idx_gz(shared_datasets / "dynamic_mnist" / "train-images-idx3-ubyte.gz")
    assert raw.shape == (60000, 28, 28) and raw.dtype == np.uint8
    s = load_dataset("dynamic_mnist", cache=data_cache)
    np.testing.assert_array_equal(s.train[[0, -1]], raw[[0, 49999]].reshape(2, -1) / np.float32(255))
    # the once-binarized validation images are draws of images 50000..59999
    val_gray = raw[50000:].reshape(10000, -1) / 255.0
    assert np.all(s.val[val_gray == 0] == 0) and np.all(s.val[val_gray == 1] == 1)


def test_caltech101(data_cache: Path, shared_datasets: Path) -> None:
    s = load_dataset("caltech101", cache=data_cache)
    _check_common(s, (4100, 2264, 2307), 784)
    for array in (s.train, s.val, s.test):
        _assert_binary(array)
        assert array.mean() < 0.5  # object = 1; silhouettes are mostly background
    raw = scipy.io.loadmat(str(shared_datasets / "caltech101_silhouettes/caltech101_silhouettes_28_split1.mat"))
    for i in (0, 17, 4099):
        upright = 1 - raw["train_data"][i].reshape(28, 28, order="F")
        np.testing.assert_array_equal(s.train[i].reshape(28, 28), upright)


def test_freyfaces(data_cache: Path, shared_datasets: Path) -> None:
    s = load_dataset("freyfaces", cache=data_cache)
    assert s.spec.likelihood == "logistic" and s.spec.shape == (1, 28, 20)
    _check_common(s, (1565, 200, 200), 560)
    for array in (s.train, s.val, s.test):
        assert 0.0 < array.min() and array.max() < 1.0
        k = array * 256 - 0.5
        np.testing.assert_array_equal(k, np.round(k))  # exactly (k + 0.5) / 256
    with open(shared_datasets / "freyfaces/freyfaces.pkl", "rb") as f:
        raw = pickle.load(f, encoding="latin1")[0]
    all_rows = np.concatenate([s.train, s.val, s.test]) * 256 - 0.5
    # the split is a permutation of all 1965 faces
    assert sorted(map(bytes, all_rows.astype(np.uint8))) == sorted(map(bytes, raw))


# --------------------------------------------------------------------------- generated Omniglot


def _omniglot_image(index: int, gray: float) -> np.ndarray:
    """An upright 28x28 test image: a 'Γ' (full-height left bar, short top bar), the index
    in binary along row 27 (columns 10..20) and a gray 8x8 block."""
    img = np.zeros((28, 28))
    img[:, 0:2] = 1.0
    img[0:2, :16] = 1.0
    img[10:18, 10:18] = gray
    bits = [(index >> b) & 1 for b in range(11)]
    img[27, 10:21] = bits
    return img


def _decode_index(img: np.ndarray) -> int:
    return int(sum(int(round(v)) << b for b, v in enumerate(img[27, 10:21])))


def _gamma_ok(img: np.ndarray) -> bool:
    return bool(np.all(img[:, 0:2] == 1) and np.all(img[0:2, :16] == 1) and np.all(img[2:26, 2:8] == 0))


def _omniglot_spec(tmp_path: Path, n_train: int, n_val: int, n_test: int) -> tuple[DatasetSpec, Path]:
    train = np.stack([_omniglot_image(i, 0.5) for i in range(n_train + n_val)])
    test = np.stack([_omniglot_image(i, 0.25) for i in range(n_test)])
    # chardata.mat layout: (784, N), each column a column-major (Fortran order) image
    data = np.stack([im.flatten(order="F") for im in train], axis=1)
    testdata = np.stack([im.flatten(order="F") for im in test], axis=1)
    mirror = tmp_path / "mirror"
    (mirror / "omniglot").mkdir(parents=True)
    path = mirror / "omniglot" / "chardata.mat"
    scipy.io.savemat(str(path), {"data": data, "testdata": testdata})
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    spec = _with_checksum(DATASETS["omniglot"], Checksum("md5", md5), sizes=(n_train, n_val, n_test))
    return spec, mirror


def test_omniglot_generated(tmp_path: Path) -> None:
    n_train, n_val, n_test = 55, 1345, 40  # the paper's 1345 validation images
    spec, mirror = _omniglot_spec(tmp_path, n_train, n_val, n_test)
    s = load_dataset(spec, mirror=mirror, cache=tmp_path / "cache")
    _check_common(s, (n_train, n_val, n_test), 784)
    train, val, test = (_images(a, (28, 28)) for a in (s.train, s.val, s.test))
    assert all(_gamma_ok(img) for img in (*train, *val, *test))  # upright, not transposed
    # train keeps the probabilities (dynamic binarization); val and test are binarized once
    assert s.spec.dynamic
    np.testing.assert_array_equal(train[:, 10:18, 10:18], 0.5)
    _assert_binary(s.val)
    _assert_binary(s.test)
    assert 0.4 < val[:, 10:18, 10:18].mean() < 0.6
    assert 0.15 < test[:, 10:18, 10:18].mean() < 0.35
    # fixed-seed shuffle, the last 1345 are validation; the test set keeps its order
    order = np.random.default_rng(SPLIT_SEED).permutation(n_train + n_val)
    assert [_decode_index(im) for im in train] == order[:n_train].tolist()
    assert [_decode_index(im) for im in val] == order[n_train:].tolist()
    assert [_decode_index(im) for im in test] == list(range(n_test))


def test_omniglot_wrong_shape(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "omniglot").mkdir(parents=True)
    path = mirror / "omniglot" / "chardata.mat"
    scipy.io.savemat(str(path), {"data": np.zeros((10, 784)), "testdata": np.zeros((784, 3))})
    spec = _with_checksum(DATASETS["omniglot"], Checksum("md5", hashlib.md5(path.read_bytes()).hexdigest()))
    with pytest.raises(DataError, match=r"chardata.mat: variable 'data' has shape \(10, 784\)"):
        fetch(spec, mirror=mirror, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # the failed fetch left nothing, not even the folder


# --------------------------------------------------------------------------- generated Histopathology


class _Py2StylePickler(pickle.Pickler):
    """Pickles arrays the way Python 2 / numpy 1 did: ``numpy.core.multiarray._reconstruct``
    and the raw data as a (latin-1) string, not a bytes object."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, np.ndarray):
            from numpy._core.multiarray import _reconstruct

            state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
            return (_reconstruct, (np.ndarray, (0,), "b"), state)
        return NotImplemented


def _py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _tar_gz(member: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _histopathology_spec(tmp_path: Path, archive: bytes, sizes: tuple[int, int, int]) -> tuple[DatasetSpec, Path]:
    mirror = tmp_path / "mirror"
    (mirror / "histopathology").mkdir(parents=True)
    (mirror / "histopathology" / "histopathology.pkl.tar.gz").write_bytes(archive)
    spec = _with_checksum(DATASETS["histopathology"], Checksum("git-blob-sha1", _git_blob_sha1(archive)), sizes=sizes)
    return spec, mirror


def test_histopathology_generated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    training = rng.random((30, 28, 28))  # (N, 28, 28) images
    training[0] = 0.0
    training[0, 0:3, :] = 1.0  # an asymmetric mark: a white band at the top
    training[1, :, :] = np.linspace(0, 1, 784).reshape(28, 28)
    validation = rng.random((7, 784))  # (N, 784) rows
    validation[0, :4] = [0.0, 1 / 256 - 1e-9, 1 / 256, 255.5 / 256]
    test = rng.random((5, 28, 28)).astype(np.float32)
    pickled = _py2_pickle({"training": training, "validation": validation, "test": test})
    spec, mirror = _histopathology_spec(tmp_path, _tar_gz("histopathology.pkl", pickled), (30, 7, 5))
    s = load_dataset(spec, mirror=mirror, cache=tmp_path / "cache")
    _check_common(s, (30, 7, 5), 784)
    for got, source in ((s.train, training), (s.val, validation), (s.test, test)):
        k = np.minimum(np.floor(source.reshape(len(source), -1).astype(np.float64) * 256), 255)
        np.testing.assert_array_equal(got, ((k + 0.5) / 256).astype(np.float32))
        assert 1 / 512 <= got.min() and got.max() <= 1 - 1 / 512
    top = s.train[0].reshape(28, 28)
    assert np.all(top[0:3] == 255.5 / 256) and np.all(top[3:] == 0.5 / 256)
    np.testing.assert_array_equal(s.val[0, :4] * 256 - 0.5, [0, 0, 1, 255])


def test_histopathology_missing_key(tmp_path: Path) -> None:
    pickled = _py2_pickle({"training": np.zeros((2, 784)), "test": np.zeros((2, 784))})
    spec, mirror = _histopathology_spec(tmp_path, _tar_gz("h.pkl", pickled), (2, 2, 2))
    with pytest.raises(DataError, match="expected a dict with keys"):
        fetch(spec, mirror=mirror, cache=tmp_path / "cache")


def test_histopathology_values_out_of_range(tmp_path: Path) -> None:
    bad = {"training": np.full((2, 784), 1.5), "validation": np.zeros((2, 784)), "test": np.zeros((2, 784))}
    spec, mirror = _histopathology_spec(tmp_path, _tar_gz("h.pkl", _py2_pickle(bad)), (2, 2, 2))
    with pytest.raises(DataError, match=r"'training' has values in \[1.5, 1.5\]"):
        fetch(spec, mirror=mirror, cache=tmp_path / "cache")


# --------------------------------------------------------------------------- restricted unpickler


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([_Evil(marker)], protocol=2))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system from .*evil.pkl"):
        read_pickle(path)
    assert not marker.exists()


def test_malicious_pickle_in_archive_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"training": _Evil(marker)})
    spec, mirror = _histopathology_spec(tmp_path, _tar_gz("histopathology.pkl", payload), (1, 1, 1))
    with pytest.raises(DataError, match="refusing to unpickle"):
        fetch(spec, mirror=mirror, cache=tmp_path / "cache")
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()  # the failed fetch left nothing, not even the folder


def test_real_frey_pickle_loads_with_the_restricted_unpickler(shared_datasets: Path) -> None:
    obj = read_pickle(shared_datasets / "freyfaces/freyfaces.pkl")
    assert isinstance(obj, list) and obj[0].shape == (1965, 560) and obj[0].dtype == np.uint8


# --------------------------------------------------------------------------- readers


def test_read_amat_layouts(tmp_path: Path) -> None:
    rows = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1]], dtype=np.uint8)
    canonical = "".join(" ".join(map(str, r)) + "\n" for r in rows)
    loose = "".join("  " + "\t".join(map(str, r)) + " \r\n" for r in rows) + "\n"
    for i, text in enumerate((canonical, loose)):
        path = tmp_path / f"ok{i}.amat"
        path.write_text(text)
        got = read_amat(path, 4)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, rows)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 1 1 0\n1 0 0\n", "row 2 has 3 values"),
        ("0 1 1 0\n1 0 2 1\n", "unexpected byte b'2'"),
        ("0 1 1 0\n1 0 0 10\n", "more than one digit"),
        ("", "empty"),
    ],
)
def test_read_amat_malformed(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.amat"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_amat(path, 4)
    assert "bad.amat" in str(err.value) and "expected text rows of 4 values" in str(err.value)


def test_read_idx(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    np.testing.assert_array_equal(read_idx_gz(path), images)
    path.write_bytes(gzip.compress(header + images.tobytes()[:-1]))
    with pytest.raises(DataError, match="x-idx3-ubyte.gz"):
        read_idx_gz(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot decompress"):
        read_idx_gz(path)
