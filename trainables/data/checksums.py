"""Checksums of source files and the one function that verifies them.

A :class:`Checksum` says which algorithm to use, the expected hex digest, and whether it
applies to the file's bytes (``of="file"``) or to the content of a gzip file after
decompression (``of="gunzipped"``; used for MNIST, whose mirrored ``.gz`` bytes differ from
the canonical ones while the decompressed IDX content is identical).

Algorithms (registry :data:`ALGORITHMS`): ``sha256``, ``md5`` and ``git-blob-sha1`` (the
object id git gives a file: sha1 over ``b"blob %d\\0" % size`` followed by the content).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainables.errors import DataError

_CHUNK = 1 << 20

Hasher = Callable[[Callable[[], Iterator[bytes]]], str]
"""Takes a function returning a fresh iterator over the content's chunks; returns a hex digest."""


def _hashlib_hasher(algorithm: str) -> Hasher:
    def digest(chunks: Callable[[], Iterator[bytes]]) -> str:
        h = hashlib.new(algorithm)
        for chunk in chunks():
            h.update(chunk)
        return h.hexdigest()

    return digest


def _git_blob_sha1(chunks: Callable[[], Iterator[bytes]]) -> str:
    size = sum(len(chunk) for chunk in chunks())
    h = hashlib.sha1(b"blob %d\0" % size)
    for chunk in chunks():
        h.update(chunk)
    return h.hexdigest()


ALGORITHMS: dict[str, Hasher] = {
    "sha256": _hashlib_hasher("sha256"),
    "md5": _hashlib_hasher("md5"),
    "git-blob-sha1": _git_blob_sha1,
}


@dataclass(frozen=True)
class Checksum:
    """An expected digest of a source file (or of its gunzipped content)."""

    algorithm: str  # a key of ALGORITHMS
    digest: str  # lower-case hex
    of: Literal["file", "gunzipped"] = "file"

    def describe(self) -> str:
        """E.g. ``"sha256"`` or ``"sha256 of the gunzipped content"``."""
        return self.algorithm if self.of == "file" else f"{self.algorithm} of the gunzipped content"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _gunzipped_chunks(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


_READERS: dict[str, Callable[[Path], Iterator[bytes]]] = {
    "file": _file_chunks,
    "gunzipped": _gunzipped_chunks,
}


def compute(path: Path, algorithm: str, of: str = "file") -> str:
    """Hex digest of ``path`` (or of its gunzipped content) with ``algorithm``."""
    read = _READERS[of]
    try:
        return ALGORITHMS[algorithm](lambda: read(path))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path} to verify its {algorithm} checksum: {exc}") from exc


def verify(path: Path, checksum: Checksum) -> None:
    """Raise :class:`DataError` unless ``path`` matches ``checksum``.

    The message names the file, the algorithm, the expected and the actual digest.
    """
    actual = compute(path, checksum.algorithm, checksum.of)
    if actual != checksum.digest.lower():
        raise DataError(
            f"checksum mismatch for {path}: {checksum.describe()} expected {checksum.digest}, "
            f"got {actual}. The file is corrupt or not the documented version; "
            "replace it with the original and fetch again."
        )
