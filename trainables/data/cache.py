"""The parsed-dataset cache: where it lives and its one file format.

Location: ``$STUDY_CACHE_DIR``, else ``$XDG_CACHE_HOME/vamp-study``, else
``~/.cache/vamp-study`` (:func:`cache_dir`).

Format (version :data:`CACHE_FORMAT` = 1). One file per dataset, ``<cache>/<name>.npz``: an
uncompressed numpy ``.npz`` archive (``np.savez``; read with ``np.load(allow_pickle=False)``)
holding these arrays:

* ``format``    int64 scalar, the format version; any other version is rebuilt.
* ``dataset``   str scalar, the registry name of the dataset.
* ``encodings`` str array of 3, the encoding names of ``train``, ``val``, ``test``.
* ``train``, ``val``, ``test``  2-D arrays (N, D): one image per row, flattened in C order of
  the upright (C, H, W) image, D = C*H*W; dtype and meaning by encoding:

  - ``binary``     uint8 in {0,1}; model value = stored value
    (static MNIST, Caltech 101, and the once-binarized val/test of MNIST and Omniglot);
  - ``bytes``      uint8 gray 0..255; model value = k/255 (dynamic-MNIST train);
  - ``bins256``    uint8 bin index k of 256 bins; model value = (k+0.5)/256 (Frey Faces,
    Histopathology);
  - ``unit_float`` float32 in [0,1]; model value = stored value (Omniglot train).

A file is valid when it opens, has format 1, the dataset's name and encodings, and arrays of
the spec's dtypes and shapes (N_split, D). An invalid file is treated as absent and rebuilt.

Writes are atomic: the archive is written to a hidden temporary file in the cache folder,
flushed to disk, then renamed over ``<name>.npz`` with ``os.replace``; on any failure the
temporary file is removed, so readers never see a partial file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from trainables.data.spec import DatasetSpec, StoredSplits
from trainables.errors import DataError

CACHE_ENV = "STUDY_CACHE_DIR"
CACHE_FORMAT = 1
SPLIT_NAMES = ("train", "val", "test")


class CacheInvalid(Exception):
    """A cache file that cannot be used (internal: callers rebuild it)."""


def cache_dir() -> Path:
    """``$STUDY_CACHE_DIR``, else ``$XDG_CACHE_HOME/vamp-study``, else ``~/.cache/vamp-study``."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vamp-study"


def cache_path(cache: Path, spec: DatasetSpec) -> Path:
    """``<cache>/<name>.npz``."""
    return cache / f"{spec.name}.npz"


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _expected(spec: DatasetSpec) -> dict[str, tuple[tuple[int, int], np.dtype]]:
    return {
        split: ((n, spec.dim), np.dtype(enc.dtype))
        for split, n, enc in zip(SPLIT_NAMES, spec.sizes, spec.encodings, strict=True)
    }


def _check_metadata(npz: np.lib.npyio.NpzFile, spec: DatasetSpec) -> None:
    if int(npz["format"]) != CACHE_FORMAT:
        raise CacheInvalid(f"format {int(npz['format'])}, expected {CACHE_FORMAT}")
    if str(npz["dataset"]) != spec.name:
        raise CacheInvalid(f"dataset {str(npz['dataset'])!r}, expected {spec.name!r}")
    if [str(e) for e in npz["encodings"]] != [e.name for e in spec.encodings]:
        raise CacheInvalid("encodings differ from the spec's")


def check_header(path: Path, spec: DatasetSpec) -> None:
    """Raise :class:`CacheInvalid` unless ``path`` looks like a valid cache of ``spec``;
    reads the metadata and the array headers only (fast)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            _check_metadata(npz, spec)
            for split, (shape, dtype) in _expected(spec).items():
                with npz.zip.open(f"{split}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    got_shape, fortran, got_dtype = _HEADER_READERS[version](member)
                if (tuple(got_shape), np.dtype(got_dtype), fortran) != (shape, dtype, False):
                    raise CacheInvalid(f"{split} is {got_dtype}{got_shape}, expected {dtype}{shape}")
    except CacheInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is simply invalid
        raise CacheInvalid(str(exc)) from exc


def is_valid(path: Path, spec: DatasetSpec) -> bool:
    """Whether :func:`check_header` accepts ``path``."""
    try:
        check_header(path, spec)
    except CacheInvalid:
        return False
    return True


def read(path: Path, spec: DatasetSpec) -> StoredSplits:
    """Read the stored splits; :class:`CacheInvalid` if the file is not a valid cache."""
    expected = _expected(spec)
    try:
        with np.load(path, allow_pickle=False) as npz:
            _check_metadata(npz, spec)
            arrays = {split: npz[split] for split in SPLIT_NAMES}
    except CacheInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad CRC, missing member...
        raise CacheInvalid(str(exc)) from exc
    for split, (shape, dtype) in expected.items():
        if arrays[split].shape != shape or arrays[split].dtype != dtype:
            got = arrays[split]
            raise CacheInvalid(f"{split} is {got.dtype}{got.shape}, expected {dtype}{shape}")
    return StoredSplits(**arrays)


def write(path: Path, spec: DatasetSpec, stored: StoredSplits) -> None:
    """Write ``stored`` to ``path`` atomically (temporary file + ``os.replace``)."""
    tmp = path.parent / f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.npz.tmp"
    try:
        # os.open (not mkstemp) so the file gets the usual umask-based permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise DataError(f"cannot write the cache file {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                format=np.int64(CACHE_FORMAT),
                dataset=np.str_(spec.name),
                encodings=np.array([e.name for e in spec.encodings]),
                **stored._asdict(),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write the cache file {path}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
