"""Tests of study.tracking with a real MLflow store (SQLite) and real checkpoints: Tune's hooks only
enqueue, epochs a crash kept from MLflow are logged later, and MLflow is brought in line with the
ledger about trials that ended while it was not told."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from study import search
from study.ledger import Ledger
from study.spec import parse_space
from study.tracking import StudyTracker, TrackingCallback, mirror_ended_trials

SPEC = {"name": "trk", "dataset": "static_mnist", "models": ["vae"],
        "space": {"lr": [5e-4], "priors": {"standard": {}}},
        "fixed": {"epochs": 3, "warmup": 1, "patience": 0, "hidden": 16, "train_limit": 100},
        "search": {"trials_per_group": 1}, "early_stopping": {"grace_period": 1},
        "evaluation": {"samples": 5, "test_limit": 10}}


@pytest.fixture
def spec():
    return parse_space(SPEC)


@pytest.fixture
def tracker(tmp_path):
    return StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", "trk", "id-1", (tmp_path / "artifacts").as_uri())


def _trained_checkpoint(spec, folder: Path, data_cache, monkeypatch, epochs: int = 3) -> tuple[Path, list]:
    """A real checkpoint of the spec's one trial after `epochs` epochs."""
    from trainables.experiment import prepare
    from trainables.train import Trainer

    monkeypatch.setenv("STUDY_CACHE_DIR", str(data_cache))
    group = search.groups(spec)[0]
    config = search.trial_config(spec, group, {"lr": 5e-4}, search.trial_seed(spec, group, 0))
    trial = prepare(config.replace(epochs=epochs, device="cpu"))
    trainer = Trainer(trial.model, trial.data, trial.config)
    trainer.fit()
    folder.mkdir(parents=True)
    trainer.save(folder / "checkpoint.pt")
    return folder, trainer.progress.history


def _trial(spec, checkpoint=None, last_result=None):
    group = search.groups(spec)[0]
    config = {"trial": group.trial_key(0), "number": 0, **search.chosen_settings(group, {"lr": 5e-4}, 1)}
    return SimpleNamespace(config=config, checkpoint=checkpoint, trial_id="t0", last_result=last_result or {},
                           error_file=None)


def test_hooks_only_enqueue_even_while_the_writer_is_stuck(spec, tracker):
    callback = TrackingCallback(tracker, tracker.parent_run({}), search.fixed_settings(spec))
    release = threading.Event()
    callback._submit(release.wait)  # a tracking server that does not answer
    trial = _trial(spec)
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "val_loss": 3.0})
    assert callback.backlog() == 3  # Tune's control loop went on; nothing was written yet
    assert tracker.run_of_trial("vae-standard-000") is None
    release.set()
    callback.flush()
    assert callback.backlog() == 0
    run = tracker.run_of_trial("vae-standard-000")
    assert run.data.metrics["val_loss"] == 3.0 and run.data.tags["vamp.study_id"] == "id-1"


def test_a_failed_tracking_call_is_told_by_flush(spec, tracker):
    callback = TrackingCallback(tracker, tracker.parent_run({}), search.fixed_settings(spec))

    def broken():
        raise ConnectionError("tracking server gone")
    callback._submit(broken)
    with pytest.raises(Exception, match="tracking server gone"):
        callback.flush()


def test_epochs_a_crash_kept_from_mlflow_come_with_the_restored_history(spec, tracker):
    callback = TrackingCallback(tracker, tracker.parent_run({}), search.fixed_settings(spec))
    trial = _trial(spec)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "val_loss": 9.0})
    callback.flush()
    history = [{"epoch": e, "val_loss": 10.0 - e} for e in (1, 2, 3)]  # epochs 2, 3 never reached MLflow
    callback.on_trial_result(0, [], trial, {"epoch": 4, "val_loss": 5.0, "restored_history": json.dumps(history)})
    callback.flush()
    values = {m.step: m.value for m in tracker.client.get_metric_history(
        tracker.run_of_trial("vae-standard-000").info.run_id, "val_loss")}
    assert values == {1: 9.0, 2: 8.0, 3: 7.0, 4: 5.0}  # epoch 1 as first logged, once


def test_mlflow_is_brought_in_line_with_the_ledger(spec, tracker, tmp_path, data_cache, monkeypatch):
    folder, history = _trained_checkpoint(spec, tmp_path / "ckpt", data_cache, monkeypatch)
    ledger = Ledger(f"sqlite:///{tmp_path}/optuna.db", spec)
    ticket = ledger.next()
    ledger.checkpointed(ticket.key, str(folder))
    ledger.ended(ticket.key, {"stop_reason": "max_epochs", "best_val_loss": history[-1]["best_val_loss"],
                              "epoch": 3, "best_epoch": 3})
    parent = tracker.parent_run({})  # the driver died before MLflow heard of the trial at all

    assert mirror_ended_trials(tracker, parent, ledger) == 1
    run = tracker.run_of_trial(ticket.key)
    assert run.info.status == "FINISHED" and run.data.tags["vamp.stop_reason"] == "max_epochs"
    assert run.data.params["seed"] == str(ticket.seed) and run.info.run_name == "vae-standard-lr5e-4-000"
    steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [1, 2, 3]
    assert {a.path for a in tracker.client.list_artifacts(run.info.run_id, "model")} == {
        "model/weights.pt", "model/config.json"}
    assert mirror_ended_trials(tracker, parent, ledger) == 0  # nothing left to do


def test_the_alias_is_placed_for_a_version_registered_by_a_cut_run(tmp_path):
    from study.protocol import Protocol
    from study.registry import _place_alias

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("m")
    tags = {**Protocol.of("static_mnist", 500, 500, 2000).tags(), "test_ll": "-100.0"}
    version = client.create_model_version("m", source=str(tmp_path), tags=tags)
    _place_alias(client, "m", version)
    assert client.get_model_version_by_alias("m", "champion").version == version.version
    worse = client.create_model_version("m", source=str(tmp_path), tags={**tags, "test_ll": "-120.0"})
    _place_alias(client, "m", worse)
    assert client.get_model_version_by_alias("m", "champion").version == version.version
