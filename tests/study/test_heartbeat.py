"""Tests of study.heartbeat: a driver on another machine is told alive or gone by whether its
heartbeat count moves, and a resume (`study resume`, `study run --resume`) waits for that answer
instead of refusing every study whose last driver ran elsewhere."""
from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from study import heartbeat as heartbeat_module
from study import study_command
from study.heartbeat import Heartbeat, driver_gone
from study.ledger import Ledger
from study.manifest import Beat, Manifest, Run, StudyFolder, fingerprint, spec_data
from study.settings import Targets
from study.spec import parse_space
from trainables.errors import InputError


def _spec():
    return parse_space({"name": "hb", "dataset": "static_mnist", "models": ["vae"],
                        "space": {"lr": {"loguniform": [1e-4, 1e-3]}, "priors": {"standard": {}}},
                        "fixed": {"epochs": 20}, "search": {"trials_per_group": 1, "seed": 0}})


def _elsewhere(folder: StudyFolder, spec, optuna: str) -> Run:
    """A study whose last run says it is running, on a machine that is not this one."""
    manifest = Manifest(name=spec.name, study_id="id", created=1.0, optuna_storage=optuna,
                        fingerprint=fingerprint(spec), spec=spec_data(spec))
    run = Run(number=1, started=time.time(), host="head-pod-of-an-old-cluster", pid=4242)
    manifest.runs.append(run)
    folder.write(manifest)
    return run


@pytest.fixture
def study_elsewhere(tmp_path):
    spec = _spec()
    optuna = f"sqlite:///{tmp_path}/optuna.db"
    Ledger(optuna, spec)  # its groups exist, as they would after a first run
    folder = StudyFolder(str(tmp_path / "ray"), spec.name)
    targets = Targets(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", optuna_storage=optuna,
                      storage=str(tmp_path / "ray"), address=None, home=tmp_path)
    return spec, folder, targets, _elsewhere(folder, spec, optuna)


def _check(spec, folder, targets, force=False):
    out = io.StringIO()
    return study_command._check_study(spec, folder, targets, True, force, Console(file=out, width=200)), out.getvalue()


def test_a_heartbeat_counts_from_its_start_and_stops(tmp_path):
    folder = StudyFolder(str(tmp_path), "s")
    run = Run(number=3, started=0.0, host="h", pid=1)
    beat = Heartbeat(folder, run, every=0.05).start()
    assert folder.read_beat() == Beat(run=3, host="h", pid=1, count=1)  # the first beat is written at once
    time.sleep(0.5)
    beat.stop()
    count = folder.read_beat().count
    assert count >= 3
    time.sleep(0.2)
    assert folder.read_beat().count == count  # stopped


def test_driver_gone_watches_the_count_not_the_clock(tmp_path):
    folder = StudyFolder(str(tmp_path), "s")
    run = Run(number=1, started=0.0, host="elsewhere", pid=7)
    assert driver_gone(folder, run, wait=0.2) is None  # never beat: nothing to tell from
    folder.write_beat(Beat(run=1, host="elsewhere", pid=7, count=5))
    started = time.monotonic()
    assert driver_gone(folder, run, wait=0.5, poll=0.1) is True
    assert time.monotonic() - started >= 0.5
    folder.write_beat(Beat(run=2, host="elsewhere", pid=7, count=5))  # another run's beat says nothing of run 1
    assert driver_gone(folder, run, wait=0.2, poll=0.1) is None
    beat = Heartbeat(folder, run, every=0.05).start()
    try:
        started = time.monotonic()
        assert driver_gone(folder, run, wait=5, poll=0.1) is False
        assert time.monotonic() - started < 2  # told as soon as the count moves
    finally:
        beat.stop()


def test_resume_continues_a_study_whose_driver_elsewhere_stopped_beating(study_elsewhere, monkeypatch):
    spec, folder, targets, run = study_elsewhere
    monkeypatch.setattr(study_command, "GONE_AFTER_SECONDS", 0.5)
    folder.write_beat(Beat(run=run.number, host=run.host, pid=run.pid, count=9))
    manifest, said = _check(spec, folder, targets)
    assert manifest.last_run == run
    assert "watching its heartbeat for 0.5 s" in said


def test_resume_refuses_a_study_whose_driver_elsewhere_still_beats(study_elsewhere, monkeypatch):
    spec, folder, targets, run = study_elsewhere
    monkeypatch.setattr(study_command, "GONE_AFTER_SECONDS", 5.0)
    beat = Heartbeat(folder, run, every=0.1).start()
    try:
        with pytest.raises(InputError, match=r"is running \(pid 4242 on head-pod-of-an-old-cluster, whose heartbeat goes on\)"):
            _check(spec, folder, targets)
    finally:
        beat.stop()


def test_resume_of_a_driver_that_left_no_heartbeat_needs_force(study_elsewhere, monkeypatch):
    spec, folder, targets, run = study_elsewhere
    monkeypatch.setattr(study_command, "GONE_AFTER_SECONDS", 0.2)
    with pytest.raises(InputError, match=r"it left no heartbeat; if that driver is gone, `study resume --force "):
        _check(spec, folder, targets)
    manifest, said = _check(spec, folder, targets, force=True)
    assert manifest.last_run == run and said == ""  # --force: no watching


def test_gone_after_outlasts_three_beats():
    assert heartbeat_module.GONE_AFTER_SECONDS > 3 * heartbeat_module.BEAT_SECONDS


def test_a_driver_in_another_container_of_the_same_host_name_is_watched_not_looked_up(study_elsewhere, monkeypatch):
    """Two containers may share a host name: a pid from another pid namespace says nothing here."""
    import socket

    spec, folder, targets, _ = study_elsewhere
    manifest = folder.read()
    run = manifest.runs[-1].model_copy(update={"host": socket.gethostname(), "machine": "other-boot/pid:[1]"})
    manifest.runs[-1] = run
    folder.write(manifest)
    monkeypatch.setattr(study_command, "GONE_AFTER_SECONDS", 0.3)
    folder.write_beat(Beat(run=run.number, host=run.host, pid=run.pid, count=1))
    checked, said = _check(spec, folder, targets)
    assert checked.last_run == run and "watching its heartbeat" in said
    assert study_command._on_this_machine(folder.begin_run(folder.read()))  # this process's own run is here


def test_a_superseded_driver_is_told_and_keeps_the_new_drivers_record(tmp_path):
    folder = StudyFolder(str(tmp_path), "s")
    manifest = Manifest(name="s", study_id="i", created=1.0, optuna_storage="x", fingerprint="f", spec={})
    old = folder.begin_run(manifest)
    told = []
    beat = Heartbeat(folder, old, every=0.05, on_superseded=lambda: told.append(True)).start()
    try:
        time.sleep(0.2)
        assert told == []  # its own run is the record's last
        new = folder.begin_run(folder.read())  # another driver took the study over
        deadline = time.monotonic() + 5
        while not told and time.monotonic() < deadline:
            time.sleep(0.05)
        assert told == [True]
    finally:
        beat.stop()
    folder.end_run(old, "interrupted")  # the old driver ends: the new one's entry stays as it is
    record = folder.read()
    assert record.runs[0].state == "interrupted" and record.last_run == new and new.state == "running"
