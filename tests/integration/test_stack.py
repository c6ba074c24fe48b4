"""`study stack up|status|down` as real processes: the local development stack (PostgreSQL, S3,
MLflow with basic auth, a Ray head) starts, is usable from its exported environment, `down`
leaves no process and no port behind, and `up` again from the same folder has every object."""
from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from study.stack import port_in_use
from tests.helpers import study
from tests.processes import alive, snapshot, started_since

REPO = Path(__file__).resolve().parents[2]
EXPORTED = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "STUDY_STORAGE", "RAY_ADDRESS",
            "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "STUDY_OPTUNA_STORAGE"}
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def clean_env(home: Path) -> dict:
    """No stack variables inherited from the caller's shell."""
    env = {k: "" for k in EXPORTED | {"MLFLOW_S3_ENDPOINT_URL"}}
    env["STUDY_HOME"] = str(home)
    return env


def test_stack_up_status_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in KEY_VARS:  # the S3 keys come from the stack's credentials file only
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "stack"
    env = clean_env(tmp_path / "studies")
    before = snapshot()
    up = study("stack", "up", "--folder", folder, "--num-cpus", 2, "--json", env=env, timeout=180)
    assert up.returncode == 0, up.stderr[-4000:]
    try:
        result = json.loads(up.stdout)
        stack_env = result["env"]
        assert EXPORTED <= stack_env.keys() and not set(KEY_VARS) & stack_env.keys()
        credentials = Path(stack_env["AWS_SHARED_CREDENTIALS_FILE"])
        assert oct(credentials.stat().st_mode & 0o777) == "0o600" and "aws_secret_access_key" in credentials.read_text()
        assert stack_env["STUDY_STORAGE"] == "s3://vamp-study/ray" and stack_env["RAY_AUTH_MODE"] == "token"
        assert oct((folder / "stack.json").stat().st_mode & 0o777) == "0o600"
        services = result["services"]
        assert set(services) == {"postgres", "s3", "mlflow", "ray"} and all(s["up"] for s in services.values())
        for host_port in (stack_env["MLFLOW_TRACKING_URI"].rsplit("/", 1)[-1], stack_env["AWS_ENDPOINT_URL"].rsplit("/", 1)[-1]):
            assert host_port.startswith("127.0.0.1:")

        # a second `up` from the same folder is refused
        again = study("stack", "up", "--folder", folder, env=env, timeout=60)
        assert again.returncode == 2 and "already running" in again.stderr

        # MLflow refuses requests without credentials, accepts the exported ones
        api = stack_env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_status(api) == 401
        assert http_status(api, ("vamp", "wrong-password")) == 401
        assert http_status(api, (stack_env["MLFLOW_TRACKING_USERNAME"], stack_env["MLFLOW_TRACKING_PASSWORD"])) == 200

        # a driver joins the Ray head with the exported environment; the S3 endpoint and bucket
        # work with the exported keys, from the driver and from a Ray worker
        driver = """
import os, ray, boto3
ray.init(log_to_driver=False)
def put(key):
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket="vamp-study", Key=key, Body=b"hello")
    return s3.get_object(Bucket="vamp-study", Key=key)["Body"].read().decode()
print("DRIVER", put("test/driver"))
print("WORKER", ray.get(ray.remote(put).remote("test/worker")))
print("CPUS", ray.cluster_resources()["CPU"])
"""
        run = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **stack_env}, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-4000:]
        assert "DRIVER hello" in run.stdout and "WORKER hello" in run.stdout and "CPUS 2.0" in run.stdout

        status = study("stack", "status", "--folder", folder, "--json", env=env, timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
        human = study("stack", "status", "--folder", folder, env=env, timeout=60)
        assert human.returncode == 0 and "ray" in human.stdout and stack_env["RAY_ADDRESS"] in human.stdout
        # the same exports again, for another shell
        exports = study("stack", "env", "--folder", folder, env=env, timeout=60)
        assert exports.returncode == 0, exports.stderr[-3000:]
        assert dict(shlex.split(line)[1].split("=", 1) for line in exports.stdout.splitlines()) == stack_env

        # every process the stack started, the Ray head's included (workers and agents too)
        started = started_since(before)
        assert {s["pid"] for s in services.values()} <= {p.pid for p in started}
        assert len(started) >= 10  # weed; postgres and its workers; mlflow; ray start, GCS, raylet, agents
        ports = [s["port"] for s in services.values() if s is not services["ray"]]
    except BaseException:
        study("stack", "down", "--folder", folder, env=env, timeout=120)
        raise

    down = study("stack", "down", "--folder", folder, env=env, timeout=120)
    assert down.returncode == 0, down.stderr[-4000:]
    assert "stopped" in down.stderr
    assert not alive(started)
    assert not any(port_in_use(port) for port in ports)
    assert not port_in_use(services["ray"]["port"], host="127.0.0.2")

    status = study("stack", "status", "--folder", folder, "--json", env=env, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is False
    stale = study("stack", "env", "--folder", folder, env=env, timeout=60)
    assert stale.returncode == 2 and "no stack runs" in stale.stderr and not stale.stdout
    again = study("stack", "down", "--folder", folder, env=env, timeout=60)
    assert again.returncode == 0 and "already down" in again.stderr

    # `up` again from the same folder: the same addresses and credentials, and every object
    again = study("stack", "up", "--folder", folder, "--json", env=env, timeout=180)
    assert again.returncode == 0, again.stderr[-4000:]
    try:
        assert json.loads(again.stdout)["env"] == stack_env
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", stack_env["AWS_SHARED_CREDENTIALS_FILE"])
        s3 = boto3.client("s3", endpoint_url=stack_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
        for key in ("test/driver", "test/worker"):
            assert s3.get_object(Bucket="vamp-study", Key=key)["Body"].read() == b"hello"
    finally:
        down = study("stack", "down", "--folder", folder, env=env, timeout=120)
    assert down.returncode == 0, down.stderr[-4000:]
    assert (folder / "s3" / "data").is_dir()  # kept until --purge

    purge = study("stack", "down", "--folder", folder, "--purge", env=env, timeout=60)
    assert purge.returncode == 0 and not folder.exists()


def test_infra_script_wraps_the_cli(tmp_path: Path):
    script = REPO / "infra" / "local" / "stack"
    assert os.access(script, os.X_OK)
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run([str(script), "status", "--folder", str(tmp_path / "none")], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0 and "no stack" in result.stdout


def test_up_refuses_a_port_of_the_saved_stack_in_use_and_starts_nothing(tmp_path: Path):
    import socket

    from study.stack import LocalStack
    from tests.processes import snapshot, started_since

    folder = tmp_path / "stack"
    saved = LocalStack.create(folder, ray=True, credentials_file=True)
    saved.save()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", saved.mlflow.port))
        holder.listen()
        before = snapshot()
        up = study("stack", "up", "--folder", folder, env=clean_env(tmp_path / "studies"), timeout=120)
        assert up.returncode == 2, up.stderr[-3000:]
        assert f"mlflow {saved.mlflow.port}" in up.stderr and "in use by another program" in up.stderr
        assert not started_since(before), "a server started"
    assert LocalStack.load(folder).status() == {"postgres": False, "s3": False, "mlflow": False, "ray": False}


def test_a_state_file_it_cannot_read_is_named_with_its_pids(tmp_path: Path):
    folder = tmp_path / "stack"
    folder.mkdir()
    old = {"folder": str(folder), "postgres": {"kind": "postgres", "pid": 4242424, "start_time": 1, "port": 5},
           "s3": {"kind": "s3", "pid": 4242425, "start_time": 1, "port": 6}}  # an earlier version's
    (folder / "stack.json").write_text(json.dumps(old))
    for args in (["up"], ["status"], ["down"], ["down", "--purge"]):
        result = study("stack", *args, "--folder", folder, env=clean_env(tmp_path / "studies"), timeout=60)
        assert result.returncode == 2, result.stderr[-3000:]
        assert str(folder / "stack.json") in result.stderr and "PIDs 4242424, 4242425" in result.stderr
    assert (folder / "stack.json").exists()  # nothing deleted
