"""Parsers: verified source files -> :class:`StoredSplits` (cache encodings, paper splits).

Each dataset's spec names one ``parse_*`` function here, called as
``parser(spec, files)`` where ``files`` maps each :class:`SourceFile` key to the local,
already verified copy. The low-level readers (``read_*``) raise :class:`DataError` naming
the file and the layout they expected when a file does not have it.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from trainables.data.spec import DatasetSpec, StoredSplits
from trainables.data.splits import (
    binarize_once,
    fortran_rows_to_c,
    shuffled,
    split_rows,
    to_bins256,
)
from trainables.data.unpickle import safe_load
from trainables.errors import DataError

_AMAT_SPACE = np.zeros(256, dtype=bool)  # lookup table: is this byte a blank?
_AMAT_SPACE[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True


# --------------------------------------------------------------------------- readers


def _read_amat_canonical(raw: np.ndarray, width: int) -> np.ndarray | None:
    """Fast path for the canonical layout ``"d d ... d\\n"`` (2*width bytes a row); None if
    ``raw`` does not have exactly that layout."""
    if raw.size == 0 or raw.size % (2 * width):
        return None
    rows = raw.reshape(-1, 2 * width)
    digits = rows[:, 0::2] - np.uint8(ord("0"))
    if (
        np.all(digits <= 1)
        and np.all(rows[:, 1:-1:2] == ord(" "))
        and np.all(rows[:, -1] == ord("\n"))
    ):
        return np.ascontiguousarray(digits)
    return None


def read_amat(path: Path, width: int) -> np.ndarray:
    """Read a text ``.amat`` of rows of ``width`` values ``0``/``1`` separated by blanks.

    Vectorised over the raw bytes (no ``np.loadtxt``). Returns uint8 (rows, width).
    """
    expected = f"text rows of {width} values 0 or 1 separated by spaces"
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    fast = _read_amat_canonical(raw, width)
    if fast is not None:
        return fast
    values = raw - np.uint8(ord("0"))  # wraps around for bytes below '0'
    is_digit = values <= 1
    is_space = _AMAT_SPACE[raw]
    if not np.all(is_digit | is_space):
        pos = int(np.flatnonzero(~(is_digit | is_space))[0])
        byte = raw[pos : pos + 1].tobytes()
        raise DataError(f"{path}: unexpected byte {byte!r} at offset {pos}; expected {expected}")
    if np.any(is_digit[1:] & is_digit[:-1]):
        raise DataError(f"{path}: found a value of more than one digit; expected {expected}")
    newlines = np.flatnonzero(raw == ord("\n"))
    starts = np.concatenate(([0], newlines + 1))
    starts = starts[starts < raw.size]
    if starts.size == 0:
        raise DataError(f"{path}: the file is empty; expected {expected}")
    per_line = np.add.reduceat(is_digit.view(np.uint8), starts, dtype=np.int64)
    per_line = per_line[per_line > 0]  # blank lines are ignored
    bad = np.flatnonzero(per_line != width)
    if bad.size or per_line.size == 0:
        detail = f"row {int(bad[0]) + 1} has {int(per_line[bad[0]])} values" if bad.size else "no rows"
        raise DataError(f"{path}: {detail}; expected {expected}")
    return values[is_digit].reshape(per_line.size, width)


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (MNIST); returns an array of its dims."""
    expected = "a gzipped IDX file of unsigned bytes (magic 0x0000 08 nn)"
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); expected {expected}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: bad header {data[:4]!r}; expected {expected}")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path}: header truncated; expected {expected}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != offset + int(np.prod(dims)):
        raise DataError(
            f"{path}: {len(data) - offset} bytes of data for dims {dims}; expected {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def read_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the variables ``keys`` of a MATLAB (v4/v5) .mat file."""
    try:
        contents = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
        raise DataError(
            f"{path}: not a readable MATLAB .mat file ({exc}); expected variables {list(keys)}"
        ) from exc
    missing = [k for k in keys if k not in contents]
    if missing:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DataError(
            f"{path}: missing variables {missing} (found {found}); expected variables {list(keys)}"
        )
    return {k: contents[k] for k in keys}


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` with the restricted unpickler (numpy arrays, lists, dicts only)."""
    try:
        with open(path, "rb") as f:
            return safe_load(f, path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def read_pickle_in_tar(path: Path) -> Any:
    """Unpickle the one ``.pkl`` member of a (gzipped) tar archive without extracting it."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            pickles = [m for m in members if m.name.endswith(".pkl")] or members
            if len(pickles) != 1:
                names = [m.name for m in members]
                raise DataError(f"{path}: expected a tar archive holding one .pkl file, found {names}")
            f = tar.extractfile(pickles[0])
            assert f is not None
            return safe_load(f, f"{path}:{pickles[0].name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .tar.gz archive ({exc})") from exc


# --------------------------------------------------------------------------- checks


def _images(x: Any, n_pixels: int, path: Path, what: str) -> np.ndarray:
    """``x`` as a 2-D array (N, n_pixels): accepts (N, n_pixels) or (N, H, W) with H*W = n_pixels."""
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # e.g. a list of images of different shapes
        raise DataError(
            f"{path}: {what} is not an array of images ({exc}); expected (N, {n_pixels}) images"
        ) from exc
    if arr.ndim >= 2 and arr.shape[0] > 0 and int(np.prod(arr.shape[1:])) == n_pixels and arr.ndim <= 3:
        return arr.reshape(arr.shape[0], n_pixels)
    raise DataError(f"{path}: {what} has shape {arr.shape}; expected (N, {n_pixels}) images")


def _require_range(x: np.ndarray, low: float, high: float, path: Path, what: str) -> None:
    if not np.issubdtype(x.dtype, np.number) or x.size == 0:
        raise DataError(f"{path}: {what} has dtype {x.dtype}; expected numbers in [{low}, {high}]")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (low <= lo and hi <= high):  # also false for NaN
        raise DataError(f"{path}: {what} has values in [{lo}, {hi}]; expected values in [{low}, {high}]")


def _require_binary(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    if not np.all((x == 0) | (x == 1)):
        raise DataError(f"{path}: {what} has values other than 0 and 1; expected binary images")
    return x.astype(np.uint8)


def _require_count(n: int, expected: int, path: Path, what: str) -> None:
    if n != expected:
        raise DataError(f"{path}: {what} has {n} images; expected {expected}")


# --------------------------------------------------------------------------- datasets


def parse_static_mnist(spec: DatasetSpec, files: Mapping[str, Path]) -> StoredSplits:
    """Larochelle's fixed binarization: three .amat files, already split."""
    return StoredSplits(*(read_amat(files[key], spec.dim) for key in ("train", "valid", "test")))


def parse_dynamic_mnist(spec: DatasetSpec, files: Mapping[str, Path]) -> StoredSplits:
    """MNIST IDX: train = first N of the training file (gray bytes), val = the rest and
    test = t10k, both binarized once with the fixed seed."""
    train_path, test_path = files["train_images"], files["test_images"]
    full = _images(read_idx_gz(train_path), spec.dim, train_path, "the image array")
    test = _images(read_idx_gz(test_path), spec.dim, test_path, "the image array")
    n_train, n_val, n_test = spec.sizes
    _require_count(len(full), n_train + n_val, train_path, "the training file")
    _require_count(len(test), n_test, test_path, "the test file")
    train, val = split_rows(full, (n_train, n_val))
    return StoredSplits(
        np.ascontiguousarray(train),
        binarize_once(val / 255.0, "val"),
        binarize_once(test / 255.0, "test"),
    )


def parse_omniglot(spec: DatasetSpec, files: Mapping[str, Path]) -> StoredSplits:
    """Burda's chardata.mat: ``data`` (784, N) and ``testdata`` (784, M), column-major
    images in [0,1]. Training images are shuffled with the fixed seed; the last
    ``spec.sizes[1]`` are the validation set. Val and test are binarized once."""
    path = files["chardata"]
    mat = read_mat(path, ("data", "testdata"))
    _, height, width = spec.shape
    parts = []
    for key in ("data", "testdata"):
        x = np.asarray(mat[key])
        if x.ndim != 2 or x.shape[0] != spec.dim:
            raise DataError(
                f"{path}: variable {key!r} has shape {x.shape}; expected ({spec.dim}, N) columns of images"
            )
        _require_range(x, 0.0, 1.0, path, f"variable {key!r}")
        parts.append(fortran_rows_to_c(x.T.astype(np.float32), height, width))
    train_all, test = parts
    n_train, n_val, n_test = spec.sizes
    _require_count(len(train_all), n_train + n_val, path, "variable 'data'")
    _require_count(len(test), n_test, path, "variable 'testdata'")
    train, val = split_rows(shuffled(train_all), (n_train, n_val))
    return StoredSplits(train, binarize_once(val, "val"), binarize_once(test, "test"))


def parse_caltech101(spec: DatasetSpec, files: Mapping[str, Path]) -> StoredSplits:
    """Marlin's silhouettes .mat: rows are column-major images, 0 = object; stored as
    ``1 - value`` (object = 1) in C order."""
    path = files["mat"]
    keys = ("train_data", "val_data", "test_data")
    mat = read_mat(path, keys)
    _, height, width = spec.shape
    out = []
    for key, n in zip(keys, spec.sizes, strict=True):
        x = _require_binary(_images(mat[key], spec.dim, path, f"variable {key!r}"), path, f"variable {key!r}")
        _require_count(len(x), n, path, f"variable {key!r}")
        out.append(fortran_rows_to_c(1 - x, height, width))
    return StoredSplits(*out)


def parse_freyfaces(spec: DatasetSpec, files: Mapping[str, Path]) -> StoredSplits:
    """Frey Faces pickle: a list holding one uint8 array (N, 560) of upright (28, 20) images
    in C order; split at random (fixed seed) into ``spec.sizes``; stored as bytes = bins."""
    path = files["pkl"]
    obj = read_pickle(path)
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], np.ndarray):
        raise DataError(
            f"{path}: unpickled a {type(obj).__name__}; "
            f"expected a list holding one uint8 array (N, {spec.dim})"
        )
    x = _images(obj[0], spec.dim, path, "the image array")
    _require_range(x, 0, 255, path, "the image array")
    if not np.all(x == np.round(x)):
        raise DataError(f"{path}: the image array has non-integer values; expected bytes 0..255")
    _require_count(len(x), sum(spec.sizes), path, "the image array")
    parts = split_rows(shuffled(x.astype(np.uint8)), spec.sizes)
    return StoredSplits(*(np.ascontiguousarray(p) for p in parts))


def parse_histopathology(spec: DatasetSpec, files: Mapping[str, Path]) -> StoredSplits:
    """Tomczak's histopathology.pkl.tar.gz: a pickled dict with 'training', 'validation'
    and 'test' gray images in [0,1] ((N,784) or (N,28,28), C order); stored as 256-bin
    indices ``min(floor(x*256), 255)``."""
    path = files["archive"]
    obj = read_pickle_in_tar(path)
    keys = ("training", "validation", "test")
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: unpickled {found}; expected a dict with keys {list(keys)}")
    out = []
    for key, n in zip(keys, spec.sizes, strict=True):
        x = _images(obj[key], spec.dim, path, f"{key!r}")
        _require_range(x, 0.0, 1.0, path, f"{key!r}")
        _require_count(len(x), n, path, f"{key!r}")
        out.append(to_bins256(x))
    return StoredSplits(*out)
