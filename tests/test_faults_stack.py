"""Faults of the storage and of the whole local stack while a study runs: the S3 server killed for
30 s and started again from its folder; the driver killed and the whole stack stopped and started
again, then `study resume`, then `study pull` and `study score` of a champion. Figures as in
tests/test_faults.py (`FAULT-FIGURES` lines)."""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from study.stack import LocalStack
from tests.helpers import Tracked, embedded_env, json_out, study, study_process
from tests.faults import assert_nothing_lost, fault_figures, fault_space, finish, report, wait_for_epochs


@pytest.fixture
def local_stack(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """The local stack without its Ray head (each study starts its own Ray): MLflow without auth,
    Ray storage and MLflow's artifacts in S3, the ledger in PostgreSQL. This process reads the
    storage with the stack's keys."""
    stack = LocalStack.create(tmp_path / "stack").start()
    try:
        for name, value in stack.s3.env().items():
            monkeypatch.setenv(name, value)
        yield SimpleNamespace(stack=stack, env={**embedded_env(tmp_path, data_cache), **stack.env()},
                              folder=tmp_path)
    finally:
        stack.remove()


def test_s3_killed_for_30_seconds_mid_study(local_stack):
    started = time.monotonic()
    stack, env, folder = local_stack.stack, local_stack.env, local_stack.folder
    space = fault_space(folder, "s3-outage")
    log = folder / "study.log"
    process = study_process("run", space, env=env, log=log)
    wait_for_epochs(stack.storage_uri, "s3-outage", process, epochs=2)
    stack.s3.process().kill()
    stack.s3.stop()
    time.sleep(30)
    stack.s3.start()
    code, output = finish(process, log, timeout=600)
    exits = [code]
    figures = fault_figures(stack.mlflow.tracking_uri, "s3-outage", stack.storage_uri,
                            env["STUDY_OPTUNA_STORAGE"])
    report("S3 server killed for 30 s", figures, exits, started)
    assert code == 0, output[-4000:]
    assert_nothing_lost(figures, trials=4, champions=2)


def test_driver_killed_and_whole_stack_restarted_then_resume(tmp_path: Path, data_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """`study stack up`; a study on it; its driver SIGKILLed; `study stack down` and `up` again from
    the same folder; `study resume` completes the study, and a champion pulled from the restarted
    stack scores what the registry logged."""
    started = time.monotonic()
    folder = tmp_path / "stack"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the keys come from the stack's file
        monkeypatch.delenv(name, raising=False)
    base = embedded_env(tmp_path, data_cache)
    up = study("stack", "up", "--folder", folder, "--num-cpus", 2, "--json", env=base, timeout=180)
    assert up.returncode == 0, up.stderr[-4000:]
    try:
        env = {**base, **json.loads(up.stdout)["env"]}
        for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            monkeypatch.setenv(name, env[name])  # this process reads Ray storage too
        space = fault_space(tmp_path, "stack-restart")
        log = tmp_path / "study.log"
        process = study_process("run", space, env=env, log=log)
        try:
            wait_for_epochs(env["STUDY_STORAGE"], "stack-restart", process, epochs=2)
        finally:
            process.send_signal(signal.SIGKILL)
            exits = [process.wait(timeout=60)]
        down = study("stack", "down", "--folder", folder, env=base, timeout=180)
        assert down.returncode == 0, down.stderr[-4000:]
        again = study("stack", "up", "--folder", folder, "--json", env=base, timeout=180)
        assert again.returncode == 0, again.stderr[-4000:]
        assert json.loads(again.stdout)["env"] == json.loads(up.stdout)["env"]  # the same addresses and keys

        resumed = study("resume", space, env=env, timeout=600)
        exits.append(resumed.returncode)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        auth = {k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        for name, value in auth.items():
            monkeypatch.setenv(name, value)
        figures = fault_figures(env["MLFLOW_TRACKING_URI"], "stack-restart", env["STUDY_STORAGE"],
                                env["STUDY_OPTUNA_STORAGE"])
        report("driver SIGKILLed, whole stack down and up, then resume", figures, exits, started)
        assert_nothing_lost(figures, trials=4, champions=2)

        for step in ("down", "up"):  # once more: the registered models outlive a restart
            assert study("stack", step, "--folder", folder, env=base, timeout=180).returncode == 0
        champion = Tracked(env["MLFLOW_TRACKING_URI"], "stack-restart").champion("static_mnist-vae-standard")
        out = tmp_path / "pulled"
        json_out(study("pull", champion.name, "--out", out, "--json", env=env))
        scored = json_out(study("score", out, "--samples", 20, "--test-limit", 50, "--json", env=env))
        assert math.isclose(scored["test_ll"], float(champion.tags["test_ll"]), rel_tol=1e-6)
    finally:
        study("stack", "down", "--folder", folder, "--purge", env=base, timeout=180)
