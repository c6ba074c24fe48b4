"""Interrupt a study's driver mid-study (Ctrl-C or SIGKILL), then `study resume`: finished trials
are not run again, no run is duplicated or left running, one registry version per group."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.study_helpers import Tracked, json_out, small_space, study, study_process

TRIALS = 4


@pytest.fixture
def base_env(tmp_path, data_cache):
    return {"STUDY_HOME": str(tmp_path / "studies"), "STUDY_CACHE_DIR": str(data_cache), "STUDY_DATA_MIRROR": "",
            "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": "", "STUDY_STORAGE": ""}


def wait_for_progress(tracking_uri: str, name: str, process, timeout: float = 300) -> None:
    """Until a trial has trained a few epochs while the study still runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the study ended before it could be interrupted"
        try:
            t = Tracked(tracking_uri, name)
            if any(len(t.epochs(r)) >= 3 for r in t.trials):
                return
        except Exception:  # noqa: BLE001 - the database or experiment may not exist yet
            pass
        time.sleep(1)
    raise AssertionError("no trial made progress in time")


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


def result_lines(storage: Path, study: str) -> dict[str, list[dict]]:
    """Tune's result.json of every trial: the results it received, in order."""
    out = {}
    for path in (storage / f"{study}-vae").glob("*/result.json"):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_study_resumes_without_repeats_or_duplicates(sig, base_env, tmp_path, reap_ray_orphans):
    name = f"resume-{sig.name.lower()}"
    space = small_space(tmp_path, name=name,
                        fixed={"epochs": 8, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 1000},
                        search={"algorithm": "tpe", "seed": 1, "trials_per_model": TRIALS, "max_concurrent": 2},
                        early_stopping={"grace_period": 4, "reduction_factor": 2})
    tracking_uri = f"sqlite:///{base_env['STUDY_HOME']}/mlflow.db"
    process = study_process("run", space, env=base_env, log=tmp_path / "first.log")
    try:
        wait_for_progress(tracking_uri, name, process)
        process.send_signal(sig)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "first.log").read_text()
    if sig == signal.SIGINT:
        assert code == 130, log[-3000:]
        assert "study resume" in log
    else:
        assert code == -signal.SIGKILL
    before = Tracked(tracking_uri, name)
    assert any(r.info.status == "RUNNING" for r in before.trials + before.parents)  # really cut mid-study

    result = json_out(study("resume", space, "--json", env=base_env))

    t = Tracked(tracking_uri, name)
    assert len(t.parents) == 1 and t.parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags["vamp.trial_id"] for r in t.trials]
    assert len(trial_ids) == TRIALS == len(set(trial_ids))  # no duplicate runs
    assert all(r.info.status in ("FINISHED", "FAILED") for r in t.trials)  # none left running
    for run in t.trials:
        epochs = t.epochs(run)
        assert epochs == list(range(1, len(epochs) + 1))  # every epoch logged once
    lines = result_lines(Path(base_env["STUDY_HOME"]) / "ray", name)
    assert sorted(lines) == sorted(trial_ids)
    for trial, results in lines.items():
        completions = [r for r in results if r.get("stop_reason")]
        assert len(completions) <= 1, f"trial {trial} completed twice"
    for group in result["champions"]:
        assert len(t.versions(group["name"])) == 1
