"""Interrupt a study's driver mid-study (Ctrl-C, SIGKILL or `study stop` from another terminal),
then `study resume`: finished trials are not run again, no run is duplicated or left running, one
registry version per group. A changed spec is refused; a larger budget adds only new trials."""
import os
import signal
from pathlib import Path

import pytest
import yaml

from tests.helpers import (Tracked, json_out, optuna_groups, result_lines, small_space, study, study_process,
                           wait_for_progress)

TRIALS = 4


def orphaned_ray_processes() -> set[int]:
    """Ray processes whose parent is gone (reparented to init)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == "1" and cmdline.startswith(b"ray::"):
            found.add(int(stat.parent.name))
    return found


@pytest.fixture
def reap_ray_orphans():
    """A SIGKILLed driver takes its raylet down (fate sharing), but the raylet's dashboard and
    runtime-env agents outlive it; stop those this test leaves behind."""
    before = orphaned_ray_processes()
    yield
    for pid in orphaned_ray_processes() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("how", ["sigint", "sigkill", "study-stop"])
def test_interrupted_study_resumes_without_repeats_or_duplicates(how, home, tmp_path, reap_ray_orphans):
    name = f"resume-{how}"
    space = small_space(tmp_path, name=name,
                        fixed={"epochs": 12, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 1000},
                        search={"algorithm": "tpe", "seed": 1, "trials_per_group": TRIALS // 2},
                        early_stopping={"grace_period": 4, "reduction_factor": 2})
    tracking_uri = f"sqlite:///{home['STUDY_HOME']}/mlflow.db"
    process = study_process("run", space, env=home, log=tmp_path / "first.log")
    try:
        wait_for_progress(tracking_uri, name, lambda: None if process.poll() is None else f"exit {process.poll()}")
        if how == "study-stop":
            stopped = json_out(study("stop", name, "--json", env=home, timeout=300))
            assert stopped == {"study": name, "state": "stopped", "run": 1}
        else:
            process.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "first.log").read_text()
    if how == "sigkill":
        assert code == -signal.SIGKILL
    else:
        assert code == 130, log[-3000:]
        assert "study resume" in log
    before = Tracked(tracking_uri, name)
    assert any(r.info.status == "RUNNING" for r in before.trials + before.parents)  # really cut mid-study
    again = study("stop", name, env=home)  # nothing runs now
    assert again.returncode == 2 and "is not running" in again.stderr

    result = json_out(study("resume", space, "--json", env=home))

    t = Tracked(tracking_uri, name)
    assert len(t.parents) == 1 and t.parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags["vamp.trial_id"] for r in t.trials]
    assert len(trial_ids) == TRIALS == len(set(trial_ids))  # no duplicate runs
    assert all(r.info.status == "FINISHED" for r in t.trials)  # none left running
    for run in t.trials:
        epochs = t.epochs(run)
        assert epochs == list(range(1, len(epochs) + 1))  # every epoch logged once
    lines = result_lines(Path(home["STUDY_HOME"]) / "ray", name)
    assert sorted(lines) == sorted(trial_ids)
    for trial, results in lines.items():
        epochs = [r["epoch"] for r in results]  # a resumed trial continues from its newest checkpoint
        assert all(later >= earlier for earlier, later in zip(epochs, epochs[1:])), (trial, epochs)
        ended = [i for i, r in enumerate(results) if r.get("stop_reason")]  # none: stopped by ASHA
        # a trial that ended just as the driver was cut is not trained again: resumed, its checkpoint
        # says it ended, and it reports that once more, for the same epoch
        assert len(ended) <= 2 and all(i >= len(results) - 2 for i in ended), f"trial {trial} went on after it ended"
        if len(ended) == 2:
            assert ended == [len(results) - 2, len(results) - 1] and epochs[-1] == epochs[-2]
            assert results[-1]["iterations_since_restore"] == 1
    groups = optuna_groups(f"sqlite:///{home['STUDY_HOME']}/optuna.db", name)
    assert all(len(trials) == TRIALS // 2 and all(t.state.is_finished() for t in trials) for trials in groups.values())
    for group in result["champions"]:
        assert len(t.versions(group["name"])) == 1


def test_resume_refuses_a_changed_spec_and_adds_the_trials_of_a_larger_budget(home, tmp_path):
    space = small_space(tmp_path, name="grow", search={"seed": 0, "trials_per_group": 1})
    first = json_out(study("run", space, "--json", env=home))
    assert first["trials"] == 2

    spec = yaml.safe_load(space.read_text())
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**spec, "fixed": {**spec["fixed"], "epochs": 5, "hidden": 32}}))
    refused = study("resume", changed, env=home)
    assert refused.returncode == 2
    assert "fixed.epochs: changed since the study started (was 3, now 5)" in refused.stderr
    assert "fixed.hidden: changed since the study started (was 64, now 32)" in refused.stderr
    assert not (Path(home["STUDY_HOME"]) / "ray" / "grow" / "run-2").exists()  # nothing started

    shrunk = tmp_path / "shrunk.yaml"
    shrunk.write_text(yaml.safe_dump({**spec, "search": {**spec["search"], "trials_per_group": 2},
                                      "space": {**spec["space"], "priors": {"standard": {"trials": 3},
                                                                            "vampprior": {"K": [20]}}}}))
    more = json_out(study("resume", shrunk, "--json", env=home))
    assert more["trials"] == 5 and more["groups"] == {"vae+standard": 3, "vae+vampprior": 2}
    run_2 = sorted(p.name for p in (Path(home["STUDY_HOME"]) / "ray" / "grow" / "run-2").iterdir() if p.is_dir())
    assert run_2 == ["vae-standard-001", "vae-standard-002", "vae-vampprior-001"]  # only the new trials ran
    t = Tracked(f"sqlite:///{home['STUDY_HOME']}/mlflow.db", "grow")
    assert len(t.trials) == 5 and len(t.parents) == 1
