"""The types of the data package: :class:`DatasetSpec` and what it is made of.

A leaf: the modules that make splits (:mod:`~trainables.data.splits`), parse files
(:mod:`~trainables.data.parsers`) and cache them (:mod:`~trainables.data.cache`) take these
types, and the registry (:mod:`~trainables.data.registry`) assembles specs from all of them;
nothing here imports those modules back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from trainables.data.sources import SourceFile


@dataclass(frozen=True)
class Encoding:
    """How one split is stored in the cache and decoded to model values."""

    name: str
    dtype: str  # numpy dtype name of the stored array
    decode: Callable[[np.ndarray], np.ndarray]  # stored -> float32 model values
    description: str


class StoredSplits(NamedTuple):
    """Train, validation and test arrays (N, D) in their stored encodings."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


#: A dataset's parser: (its spec, each SourceFile key -> the verified local file) -> StoredSplits.
Parser = Callable[["DatasetSpec", Mapping[str, Path]], StoredSplits]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the project knows about one dataset."""

    name: str  # registry key
    shape: tuple[int, int, int]  # (channels, height, width)
    likelihood: str  # "bernoulli" (binary data) or "logistic" (256-bin gray data)
    dynamic: bool  # training images are probabilities, binarized afresh each epoch by the trainer
    pseudoinput_mean: float  # N(mean, std) initialisation of VampPrior pseudo-inputs
    pseudoinput_std: float
    files: tuple[SourceFile, ...]  # what to fetch
    parser: Parser  # verified files -> StoredSplits
    sizes: tuple[int, int, int]  # (train, val, test) image counts
    encodings: tuple[Encoding, Encoding, Encoding]  # stored form of (train, val, test)
    description: str = ""

    @property
    def dim(self) -> int:
        """Number of values per image, C*H*W."""
        c, h, w = self.shape
        return c * h * w


@dataclass(frozen=True)
class Splits:
    """Model-ready data: float32 arrays of shape (N, D), rows = flattened upright images
    (C order of a (C, H, W) image), values in [0, 1]."""

    spec: DatasetSpec
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
