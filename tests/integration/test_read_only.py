"""The read-only commands (`study status`, `study pull`, `study score models:/...`) pointed at an
SQLite tracking store that does not exist: exit 2, say so, and write nothing (no empty store, no
studies/ or mlruns/ folders)."""
import subprocess
from pathlib import Path

import pytest

from tests.helpers import study


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder.resolve()


def assert_refused(result: subprocess.CompletedProcess, store: Path, folder: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "no tracking store" in result.stderr and str(store) in result.stderr, result.stderr
    assert "study run" in result.stderr and "--tracking-uri" in result.stderr
    assert result.stdout == ""
    assert list(folder.iterdir()) == []


def test_status_does_not_create_the_default_store(empty: Path):
    assert_refused(study("status", "--json", cwd=empty), empty / "studies" / "mlflow.db", empty)


def test_pull_does_not_create_a_mistyped_store(empty: Path):
    result = study("pull", "some-model@champion", "--out", "model", "--tracking-uri", "sqlite:///nope.db",
                   cwd=empty)
    assert_refused(result, empty / "nope.db", empty)


def test_score_registered_model_does_not_create_the_store(empty: Path):
    result = study("score", "models:/some-model@champion", "--device", "cpu", cwd=empty,
                   env={"MLFLOW_TRACKING_URI": "sqlite:///nope.db"})
    assert_refused(result, empty / "nope.db", empty)
