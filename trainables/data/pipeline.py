"""Fetch -> verify -> parse -> cache, and loading model-ready splits.

:func:`fetch` makes ``<cache>/<name>.npz`` exist: it returns at once when a valid cache file is
there; otherwise it copies (mirror) or downloads (URLs) every source file into a temporary
folder inside the cache folder, verifies each checksum, parses, and writes the cache file
atomically. The temporary folder is removed whatever happens, so a failed or interrupted
fetch leaves nothing behind. :func:`load_dataset` reads the cache into :class:`Splits`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainables.data import cache as cache_files
from trainables.data.cache import CacheInvalid, cache_dir
from trainables.data.checksums import verify
from trainables.data.registry import get_spec
from trainables.data.sources import MIRROR_ENV, acquire, mirror_dir
from trainables.data.spec import DatasetSpec, Splits, StoredSplits
from trainables.data.splits import decode
from trainables.errors import DataError


def _quiet(_: str) -> None:
    """The default progress callback: says nothing."""


def _resolve_mirror(mirror: Path | str | None) -> Path | None:
    folder = mirror_dir() if mirror is None else Path(mirror).expanduser()
    if folder is not None and not folder.is_dir():
        origin = "--mirror" if mirror is not None else MIRROR_ENV
        raise DataError(f"data mirror folder {folder} ({origin}) does not exist or is not a folder")
    return folder


def _check_stored(spec: DatasetSpec, stored: StoredSplits) -> None:
    for split, array, n, enc in zip(cache_files.SPLIT_NAMES, stored, spec.sizes, spec.encodings, strict=True):
        if array.shape != (n, spec.dim) or array.dtype != np.dtype(enc.dtype):
            raise DataError(
                f"{spec.name}: parsed {split} split is {array.dtype}{array.shape}, expected "
                f"{enc.dtype}{(n, spec.dim)}; the source files do not have the documented layout"
            )


def _build(spec: DatasetSpec, target: Path, mirror: Path | None, say: Callable[[str], None]) -> None:
    """Acquire, verify and parse ``spec``'s files, then write ``target`` atomically."""
    cache = target.parent
    created = not cache.exists()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {cache}: {exc}; set STUDY_CACHE_DIR") from exc
    try:
        _build_into(spec, target, mirror, say, cache)
    except BaseException:
        if created and not any(cache.iterdir()):  # a failed fetch leaves nothing behind
            cache.rmdir()
        raise


def _build_into(spec: DatasetSpec, target: Path, mirror: Path | None, say: Callable[[str], None],
                cache: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", suffix=".partial", dir=cache) as tmp:
        files: dict[str, Path] = {}
        for source in spec.files:
            path = acquire(spec.name, source, mirror=mirror, dest_dir=Path(tmp), progress=say)
            say(f"{spec.name}: verifying {source.filename} ({source.checksum.describe()})")
            verify(path, source.checksum)
            files[source.key] = path
        say(f"{spec.name}: parsing")
        stored = spec.parser(spec, files)
        _check_stored(spec, stored)
        cache_files.write(target, spec, stored)
    say(f"{spec.name}: cached at {target}")


def fetch(
    name: str | DatasetSpec,
    *,
    mirror: Path | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Make the parsed cache file of dataset ``name`` exist and return its path.

    Idempotent: returns at once when a valid cache file is there. ``mirror=None`` means
    ``$STUDY_DATA_MIRROR`` (if set), ``cache=None`` means :func:`cache_dir`. ``name`` may also
    be a :class:`DatasetSpec` (e.g. a variant with other checksums). Raises
    :class:`DataError` for an unknown name, an unfetchable, corrupt or malformed file.
    """
    spec = get_spec(name)
    target = cache_files.cache_path(cache_dir() if cache is None else Path(cache).expanduser(), spec)
    if cache_files.is_valid(target, spec):
        return target
    _build(spec, target, _resolve_mirror(mirror), progress or _quiet)
    return target


def load_dataset(
    name: str | DatasetSpec,
    *,
    mirror: Path | None = None,
    cache: Path | None = None,
) -> Splits:
    """:func:`fetch` if needed, then read the cache and return model-ready float32 splits.

    A cache file whose data cannot be read is deleted and rebuilt once.
    """
    spec = get_spec(name)
    for attempt in range(2):
        path = fetch(spec, mirror=mirror, cache=cache)
        try:
            return decode(spec, cache_files.read(path, spec))
        except CacheInvalid as exc:
            if attempt:
                raise DataError(
                    f"{spec.name}: the cache file {path} cannot be read after rebuilding it ({exc})"
                ) from exc
            path.unlink(missing_ok=True)
    raise AssertionError("unreachable")
