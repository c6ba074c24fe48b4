"""Fixed-seed splits and binarization, encodings, and the model-ready Splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainables.data import BINARIZATION_SEED, DATASETS, load_dataset
from trainables.data.splits import (
    BINS256,
    BYTES,
    binarize_once,
    fortran_rows_to_c,
    shuffled,
    split_rows,
    to_bins256,
)


def test_fixed_seed_splits_are_deterministic(tmp_path: Path, shared_datasets: Path, data_cache: Path) -> None:
    """Rebuilding from the original files in a fresh cache gives identical splits."""
    for name in ("freyfaces", "dynamic_mnist"):
        first = load_dataset(name, cache=data_cache)
        second = load_dataset(name, mirror=shared_datasets, cache=tmp_path / "fresh")
        for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
            np.testing.assert_array_equal(a, b)


def test_loads_are_equal(data_cache: Path) -> None:
    a = load_dataset("caltech101", cache=data_cache)
    b = load_dataset("caltech101", cache=data_cache)
    assert a.spec is b.spec is DATASETS["caltech101"]
    np.testing.assert_array_equal(a.val, b.val)


def test_binarize_once_is_fixed_and_per_split() -> None:
    p = np.full((200, 50), 0.3, dtype=np.float32)
    val = binarize_once(p, "val")
    assert val.dtype == np.uint8 and set(np.unique(val)) == {0, 1}
    np.testing.assert_array_equal(val, binarize_once(p, "val"))
    expected = np.random.default_rng([BINARIZATION_SEED, 1]).binomial(1, p.astype(np.float64))
    np.testing.assert_array_equal(val, expected)
    assert not np.array_equal(val, binarize_once(p, "test"))  # independent streams
    assert abs(val.mean() - 0.3) < 0.02
    np.testing.assert_array_equal(binarize_once(np.array([[0.0, 1.0]]), "test"), [[0, 1]])


def test_shuffled_and_split_rows() -> None:
    x = np.arange(10)[:, None]
    s = shuffled(x)
    np.testing.assert_array_equal(s, shuffled(x))
    assert sorted(s.ravel().tolist()) == list(range(10)) and s.ravel().tolist() != list(range(10))
    parts = split_rows(s, (6, 3, 1))
    assert [len(p) for p in parts] == [6, 3, 1]
    np.testing.assert_array_equal(np.concatenate(parts), s)
    with pytest.raises(ValueError):
        split_rows(x, (5, 4))


def test_encodings_decode_to_float32_unit_interval() -> None:
    k = np.arange(256, dtype=np.uint8)[None, :]
    bins = BINS256.decode(k)
    assert bins.dtype == np.float32
    np.testing.assert_array_equal(bins[0], (np.arange(256) + 0.5) / 256)
    assert bins.min() == 1 / 512 and bins.max() == 1 - 1 / 512
    np.testing.assert_array_equal(BYTES.decode(k)[0, [0, 255]], [0.0, 1.0])


def test_to_bins256_edges() -> None:
    x = np.array([0.0, 1 / 256 - 1e-12, 1 / 256, 0.5, 1 - 1e-12, 1.0])
    np.testing.assert_array_equal(to_bins256(x), [0, 0, 1, 128, 255, 255])
    assert to_bins256(x).dtype == np.uint8


def test_fortran_rows_to_c() -> None:
    img = np.arange(6).reshape(2, 3)  # H=2, W=3, asymmetric
    rows = np.stack([img.flatten(order="F"), (img + 10).flatten(order="F")])
    np.testing.assert_array_equal(fortran_rows_to_c(rows, 2, 3), np.stack([img.ravel(), (img + 10).ravel()]))


def test_dynamic_datasets_store_probabilities_for_training() -> None:
    for spec in DATASETS.values():
        train_enc, val_enc, test_enc = spec.encodings
        if spec.dynamic:
            assert train_enc.name in {"bytes", "unit_float"}
            assert val_enc.name == test_enc.name == "binary"
        if spec.likelihood == "logistic":
            assert {e.name for e in spec.encodings} == {"bins256"}
