"""The RayJob's entrypoint (`study run --resume SPACE`, infra/k8s/study/rayjob.yaml), submitted the way
KubeRay's submitter does it: `ray job submit` to the Jobs API of a real Ray head with token
authentication, the driver running on the head with the head's environment. Its driver is
SIGKILLed mid-study and the same entrypoint is submitted again, as a RayJob retry would: the study
finishes with every trial run once; submitted once more it changes nothing; with a changed spec
the job fails with exit code 2 and starts nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from study.stack import RayHead
from study.stack.process import executable
from tests.helpers import REPO, Tracked, optuna_groups, small_space, wait_for_progress

TRIALS = 4
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def manifest_entrypoint(space: Path) -> str:
    """rayjob.yaml's entrypoint, for this space file instead of the ConfigMap's."""
    job = next(d for d in yaml.safe_load_all((REPO / "infra/k8s/study/rayjob.yaml").read_text()) if d)
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.endswith(" /config/spaces/omniglot.yaml"), entrypoint
    return entrypoint.replace("/config/spaces/omniglot.yaml", str(space))


@pytest.fixture
def head(tmp_path, home):
    """A Ray head with the dashboard (the Jobs API): its environment is the drivers' (the RayJob's
    head reads the ConfigMap and Secret), with `study` on its PATH, as in the image."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    server = RayHead(tmp_path / "ray-head", dashboard=True, num_cpus=2, env={**home, "PATH": path})
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Jobs:
    """`ray job ...` against the head, as KubeRay's submitter runs it (token from the head)."""

    def __init__(self, head: RayHead):
        self.head = head
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head.token_path)}
        self.env.pop("RAY_ADDRESS", None)

    def ray(self, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([executable("ray"), "job", command, "--address", self.head.dashboard_url, *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout)

    def submit(self, submission_id: str, entrypoint: str) -> None:
        result = self.ray("submit", "--submission-id", submission_id, "--no-wait", "--", *entrypoint.split())
        assert result.returncode == 0, result.stdout + result.stderr

    def wait(self, submission_id: str, timeout: float = 600) -> tuple[str, str]:
        """The job's final status and its logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info(submission_id)
            if info["status"] in TERMINAL:
                return info["status"], self.ray("logs", submission_id).stdout + f"\n{info['message']}"
            time.sleep(2)
        raise AssertionError(f"job {submission_id} did not end within {timeout} s: "
                             + self.ray("logs", submission_id).stdout[-3000:])

    def info(self, submission_id: str) -> dict:
        """The Jobs API's record of the job (status, message, driver_info), asked over HTTP with the
        token, as KubeRay's status polls do (Ray's SDK would read the token mode once per process)."""
        token = self.head.token_path.read_text().strip()
        request = urllib.request.Request(f"{self.head.dashboard_url}/api/jobs/{submission_id}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def running(self, submission_id: str) -> str | None:
        """None while the job runs, else its logs (for wait_for_progress)."""
        ended = self.info(submission_id)["status"] in TERMINAL
        return self.ray("logs", submission_id).stdout[-3000:] if ended else None


def test_the_rayjob_entrypoint_resumes_after_its_driver_is_killed(head, home, tmp_path):
    name = "job-resume"
    space = small_space(tmp_path, name=name,
                        fixed={"epochs": 12, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 1000},
                        search={"algorithm": "tpe", "seed": 1, "trials_per_group": TRIALS // 2},
                        early_stopping={"grace_period": 4, "reduction_factor": 2})
    entrypoint = manifest_entrypoint(space)
    tracking_uri = f"sqlite:///{home['STUDY_HOME']}/mlflow.db"
    jobs = Jobs(head)

    jobs.submit("attempt-1", entrypoint)
    wait_for_progress(tracking_uri, name, lambda: jobs.running("attempt-1"))
    driver = psutil.Process(int(jobs.info("attempt-1")["driver_info"]["pid"]))  # the entrypoint's ray.init
    assert "--resume" in driver.cmdline()
    driver.send_signal(signal.SIGKILL)
    status, logs = jobs.wait("attempt-1", timeout=120)
    assert status == "FAILED", logs[-3000:]
    before = Tracked(tracking_uri, name)
    assert any(r.info.status == "RUNNING" for r in before.trials + before.parents)  # really cut mid-study
    # As a RayJob retry sees it: the killed driver ran on the head of a cluster that is gone.
    record = Path(home["STUDY_HOME"]) / "ray" / name / "study.json"
    manifest = json.loads(record.read_text())
    manifest["runs"][-1].update(host="omniglot-study-raycluster-x7k2p-head", machine="another-boot/pid:[1]")
    record.write_text(json.dumps(manifest))
    beat = json.loads((record.parent / "driver.json").read_text())
    (record.parent / "driver.json").write_text(json.dumps({**beat, "host": "omniglot-study-raycluster-x7k2p-head"}))

    jobs.submit("attempt-2", entrypoint)  # a retry: the same command
    status, logs = jobs.wait("attempt-2")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "watching its heartbeat" in logs and f"study {name} (run 2)" in logs

    t = Tracked(tracking_uri, name)
    assert len(t.parents) == 1 and t.parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags["vamp.trial_id"] for r in t.trials]
    assert len(trial_ids) == TRIALS == len(set(trial_ids))  # no duplicate runs
    assert all(r.info.status == "FINISHED" for r in t.trials)
    for run in t.trials:
        epochs = t.epochs(run)
        assert epochs == list(range(1, len(epochs) + 1))  # every epoch logged once
    groups = optuna_groups(f"sqlite:///{home['STUDY_HOME']}/optuna.db", name)
    assert all(len(trials) == TRIALS // 2 and all(t.state.is_finished() for t in trials) for trials in groups.values())
    names = ["static_mnist-vae-standard", "static_mnist-vae-vampprior"]
    assert all(len(t.versions(n)) == 1 for n in names)

    jobs.submit("attempt-3", entrypoint)  # submitted again after it finished: nothing more to do
    status, logs = jobs.wait("attempt-3")
    assert status == "SUCCEEDED", logs[-4000:]
    again = Tracked(tracking_uri, name)
    assert len(again.trials) == TRIALS and len(again.parents) == 1
    assert all(len(again.versions(n)) == 1 for n in names)

    spec = yaml.safe_load(space.read_text())
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**spec, "fixed": {**spec["fixed"], "epochs": 5}}))
    jobs.submit("changed", manifest_entrypoint(changed))
    status, logs = jobs.wait("changed")
    assert status == "FAILED" and "exit code 2" in logs, logs[-3000:]
    assert "fixed.epochs: changed since the study started (was 12, now 5)" in logs
    runs = sorted(p.name for p in (Path(home["STUDY_HOME"]) / "ray" / name).iterdir() if p.name.startswith("run-"))
    assert runs == ["run-1", "run-2", "run-3"]  # nothing started for the changed spec
