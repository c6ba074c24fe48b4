"""Source files: where each comes from (a mirror folder, then its URLs) and getting a copy.

A mirror folder is laid out like ``../shared/datasets/``: ``<mirror>/<SourceFile.path>``,
e.g. ``<mirror>/static_mnist/binarized_mnist_train.amat``. :func:`acquire` copies the file
from the mirror when it is there, else downloads it from each URL in turn, into a folder the
caller provides (a temporary folder inside the cache folder), and says which file to put
where when neither works.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trainables.data.checksums import Checksum
from trainables.errors import DataError

MIRROR_ENV = "STUDY_DATA_MIRROR"
DOWNLOAD_TIMEOUT_S = 30.0
_USER_AGENT = "vamp-study (dataset fetch)"


@dataclass(frozen=True)
class SourceFile:
    """One original file of a dataset."""

    key: str  # the name the dataset's parser knows it by
    path: str  # relative path in a mirror folder, POSIX style: "<dir>/<filename>"
    urls: tuple[str, ...]  # canonical URL first, then mirrors
    checksum: Checksum

    @property
    def filename(self) -> str:
        """The file's name (last part of :attr:`path`)."""
        return PurePosixPath(self.path).name


def mirror_dir() -> Path | None:
    """The mirror folder named by ``$STUDY_DATA_MIRROR``, or None when it is unset or empty."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _download(url: str, dest: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


def acquire(
    dataset: str,
    source: SourceFile,
    *,
    mirror: Path | None,
    dest_dir: Path,
    progress: Callable[[str], None],
) -> Path:
    """Copy ``source`` from ``mirror`` or download it into ``dest_dir``; return the copy's path.

    Raises :class:`DataError` saying where to put the file when it can be neither copied nor
    downloaded.
    """
    dest = dest_dir / source.filename
    reasons: list[str] = []
    if mirror is not None:
        candidate = mirror / source.path
        if candidate.is_file():
            progress(f"{dataset}: copying {candidate}")
            try:
                shutil.copyfile(candidate, dest)
            except OSError as exc:
                raise DataError(f"{dataset}: cannot copy {candidate}: {exc}") from exc
            return dest
        reasons.append(f"not in mirror {mirror}")
    for url in source.urls:
        progress(f"{dataset}: downloading {url}")
        try:
            _download(url, dest)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reasons.append(f"{url}: {_reason(exc)}")
            dest.unlink(missing_ok=True)
            continue
        return dest
    where = (
        f"{mirror / source.path} (the mirror folder in use)"
        if mirror is not None
        else f"DIR/{source.path} for a folder DIR of your choice, "
        f"then set {MIRROR_ENV}=DIR (or run `study data fetch {dataset} --mirror DIR`)"
    )
    raise DataError(
        f"{dataset}: cannot fetch {source.filename} ({'; '.join(reasons)}). "
        f"Download it and put it at {where}"
    )
