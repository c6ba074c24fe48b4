"""Splits: the fixed-seed operations that make them, their stored encodings, and the
model-ready :class:`Splits`.

Fixed seeds (independent of any trial seed, so every trial trains and scores on the same sets):

* :data:`SPLIT_SEED` seeds the shuffles of the random splits (Omniglot's validation set, the
  Frey Faces train/val/test split): ``np.random.default_rng(SPLIT_SEED).permutation(n)``.
* :data:`BINARIZATION_SEED` seeds the one-off binarization of the validation and test sets of
  the dynamically binarized datasets (MNIST, Omniglot), as the paper's code does with
  ``np.random.seed(777)``: ``np.random.default_rng([BINARIZATION_SEED, stream]).binomial(1, p)``
  with ``stream`` 1 for validation and 2 for test.

Encodings (:data:`BINARY`, :data:`BYTES`, :data:`BINS256`, :data:`UNIT_FLOAT`) say how a split is stored in the cache and how it is turned into
model values (float32 in [0, 1]). The types (:class:`Encoding`, :class:`StoredSplits`,
:class:`Splits`) live in :mod:`trainables.data.spec`.
"""

from __future__ import annotations

import numpy as np

from trainables.data.spec import DatasetSpec, Encoding, Splits, StoredSplits

SPLIT_SEED: int = 1705
"""Seed of the fixed random splits (Omniglot validation, Frey Faces)."""

BINARIZATION_SEED: int = 777
"""Seed of the one-off binarization of validation and test sets (the paper's value)."""

_STREAMS: dict[str, int] = {"val": 1, "test": 2}


def _decode_binary(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def _decode_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0)


def _decode_bins256(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) + np.float32(0.5)) / np.float32(256.0)


def _decode_unit_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


BINARY = Encoding("binary", "uint8", _decode_binary, "uint8 in {0,1}; model value = stored value")
BYTES = Encoding(
    "bytes", "uint8", _decode_bytes, "uint8 gray 0..255; model value = k/255 (a probability)"
)
BINS256 = Encoding(
    "bins256", "uint8", _decode_bins256, "uint8 bin index k of 256 bins; model value = (k+0.5)/256"
)
UNIT_FLOAT = Encoding(
    "unit_float", "float32", _decode_unit_float, "float32 in [0,1]; model value = stored value"
)


def decode(spec: DatasetSpec, stored: StoredSplits) -> Splits:
    """Turn stored arrays into model-ready :class:`Splits` using the spec's encodings."""
    arrays = [enc.decode(x) for enc, x in zip(spec.encodings, stored, strict=True)]
    return Splits(spec, *arrays)


def shuffled(x: np.ndarray) -> np.ndarray:
    """``x``'s rows in the fixed random order of :data:`SPLIT_SEED`."""
    return x[np.random.default_rng(SPLIT_SEED).permutation(len(x))]


def split_rows(x: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Consecutive blocks of ``sizes`` rows of ``x`` (``sum(sizes)`` must equal ``len(x)``)."""
    if sum(sizes) != len(x):
        raise ValueError(f"cannot split {len(x)} rows into {sizes}")
    bounds = np.cumsum((0, *sizes))
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def binarize_once(probabilities: np.ndarray, split: str) -> np.ndarray:
    """Bernoulli draw of ``probabilities`` (in [0,1]) with the fixed seed of ``split``
    ("val" or "test"); returns uint8 {0,1}."""
    rng = np.random.default_rng([BINARIZATION_SEED, _STREAMS[split]])
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    return rng.binomial(1, p).astype(np.uint8)


def to_bins256(x: np.ndarray) -> np.ndarray:
    """Bin index ``k = min(floor(x * 256), 255)`` (uint8) of gray values ``x`` in [0, 1]."""
    return np.minimum(np.floor(np.asarray(x, dtype=np.float64) * 256.0), 255).astype(np.uint8)


def fortran_rows_to_c(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rows holding column-major (H, W) images -> rows holding the same images in C order."""
    n = x.shape[0]
    return np.ascontiguousarray(x.reshape(n, width, height).transpose(0, 2, 1)).reshape(n, -1)
