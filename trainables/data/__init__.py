"""Datasets of the VampPrior paper: fetch (mirror or URL), verify, parse, cache, load.

Modules, one job each:

* :mod:`~trainables.data.spec`      -- the types: :class:`DatasetSpec`, :class:`Encoding`, :class:`Splits`;
* :mod:`~trainables.data.registry`  -- the :data:`DATASETS` registry, one spec per dataset;
* :mod:`~trainables.data.sources`   -- :class:`SourceFile`, the mirror folder, copy/download;
* :mod:`~trainables.data.checksums` -- :class:`Checksum` and :func:`verify`;
* :mod:`~trainables.data.parsers`   -- file formats -> stored splits, one parser per dataset;
* :mod:`~trainables.data.unpickle`  -- the restricted unpickler for the dataset pickles;
* :mod:`~trainables.data.splits`    -- fixed-seed splits/binarization, the encodings;
* :mod:`~trainables.data.cache`     -- the cache folder and its ``.npz`` format;
* :mod:`~trainables.data.pipeline`  -- :func:`fetch` and :func:`load_dataset`.

Typical use::

    splits = load_dataset("static_mnist")          # float32 (N, 784) arrays in [0, 1]
    fetch("caltech101", mirror=Path("/data/mirror"))  # just make the cache file exist

Every user-facing failure raises :class:`trainables.errors.DataError`.
"""

from trainables.data.cache import CACHE_FORMAT, cache_dir
from trainables.data.checksums import Checksum, verify
from trainables.data.pipeline import fetch, load_dataset
from trainables.data.registry import DATASETS, get_spec
from trainables.data.sources import SourceFile, mirror_dir
from trainables.data.spec import DatasetSpec, Encoding, Splits
from trainables.data.splits import BINARIZATION_SEED, SPLIT_SEED

__all__ = [
    "BINARIZATION_SEED",
    "CACHE_FORMAT",
    "DATASETS",
    "SPLIT_SEED",
    "Checksum",
    "DatasetSpec",
    "Encoding",
    "SourceFile",
    "Splits",
    "cache_dir",
    "fetch",
    "get_spec",
    "load_dataset",
    "mirror_dir",
    "verify",
]
