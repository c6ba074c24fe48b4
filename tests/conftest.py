"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# --------------------------------------------------------------------------- data fixtures

MIRRORED_DATASETS = ("static_mnist", "dynamic_mnist", "caltech101", "freyfaces")
"""The datasets whose original files are in ../shared/datasets (the others are not)."""


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The local mirror of the original dataset files: ``../shared/datasets`` next to the repo."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.fail(f"dataset mirror {path} not present: the tests need ../shared/datasets beside the repo")
    return path


@pytest.fixture(scope="session")
def data_cache(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the four mirrored datasets, fetched once per session through
    the real fetch path. Use it as ``cache=`` or via ``monkeypatch.setenv("STUDY_CACHE_DIR", ...)``;
    do not write into it."""
    from trainables.data import fetch

    cache = tmp_path_factory.mktemp("data-cache")
    for name in MIRRORED_DATASETS:
        fetch(name, mirror=shared_datasets, cache=cache)
    return cache
