"""Credentials stay secret: a study runs against the local stack (`study stack up`, MLflow with basic
auth, Ray storage in S3, a Ray head with token auth) whose every credential is a distinctive
value, and none of them appears in what the study leaves behind: MLflow params, tags, metrics,
run and model metadata (through the API and in the backend database), artifacts and Ray storage
(every object of the bucket), the study's output, the servers' logs and Ray's session logs, nor
on any process's command line. A control writes a secret into a scratch file and checks that
the same search finds it, so the search itself can fail. And the S3 endpoint and the MLflow
REST API refuse a request without credentials."""
from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from tests.helpers import json_out, small_space, study

STACK_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
              "AWS_SHARED_CREDENTIALS_FILE", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
              "STUDY_STORAGE", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "STUDY_OPTUNA_STORAGE")
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


# --------------------------------------------------------------------------- the search


def needles(secrets_: dict[str, str], user: str = "vamp") -> dict[str, bytes]:
    """Each secret as it could appear: plain, URL-quoted, and the basic-auth header of the MLflow
    password."""
    found: dict[str, bytes] = {}
    for name, value in secrets_.items():
        found[name] = value.encode()
        quoted = urllib.parse.quote(value, safe="")
        if quoted != value:
            found[f"{name} (url-quoted)"] = quoted.encode()
    found["MLflow basic-auth header"] = base64.b64encode(f"{user}:{secrets_['mlflow password']}".encode())
    return found


def search(blobs: Iterable[tuple[str, bytes]], needles_: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, which secret) for every secret found in any blob."""
    return [(where, name) for where, blob in blobs for name, needle in needles_.items() if needle in blob]


def files_under(*roots: Path, skip: Iterable[Path] = ()) -> Iterator[tuple[str, bytes]]:
    """Every regular file below ``roots`` (following the stack's symbolic links to its /tmp
    folders), except ``skip``."""
    skip = {p.resolve() for p in skip}
    seen = set()
    for root in roots:
        for dirpath, _, filenames in os.walk(root, followlinks=True):
            for filename in filenames:
                path = Path(dirpath, filename)
                try:
                    real = path.resolve()
                    if real in skip or real in seen or not real.is_file() or real.is_socket():
                        continue
                    seen.add(real)
                    yield str(path), real.read_bytes()
                except OSError:
                    continue


# --------------------------------------------------------------------------- the stack


@pytest.fixture
def secret_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`study stack up` with distinctive credentials; yields (env, secrets, folder); `down --purge`
    at the end. The S3 keys reach clients only through the stack's credentials file."""
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    tag = secrets.token_hex(4)
    values = {
        "mlflow password": f"MlflowPw-{tag}-Zq7",
        "S3 access key": f"VAMPACCESS{tag.upper()}X",
        "S3 secret key": f"S3Secret-{tag}-Kx9",
        "postgres password": f"PgPw-{tag}-Wm3",
    }
    folder = tmp_path / "stack"
    base = {k: "" for k in STACK_VARS}
    base.update({"STUDY_HOME": str(tmp_path / "studies"),
                 "STUDY_STACK_MLFLOW_PASSWORD": values["mlflow password"],
                 "STUDY_STACK_S3_ACCESS_KEY": values["S3 access key"],
                 "STUDY_STACK_S3_SECRET_KEY": values["S3 secret key"],
                 "STUDY_STACK_POSTGRES_PASSWORD": values["postgres password"]})
    up = study("stack", "up", "--folder", folder, "--json", env=base, timeout=180)
    assert up.returncode == 0, up.stderr[-4000:]
    try:
        env = json.loads(up.stdout)["env"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == values["mlflow password"]
        assert not set(KEY_VARS) & env.keys()  # exported as a file path, not as values
        assert values["S3 secret key"] in Path(env["AWS_SHARED_CREDENTIALS_FILE"]).read_text()
        values["Ray token"] = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        yield env, values, folder
    finally:
        study("stack", "down", "--folder", folder, "--purge", env=base, timeout=180)


def test_servers_refuse_requests_without_credentials(secret_stack):
    env, values, _ = secret_stack
    # S3: no signature, or a signature with the wrong secret
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    for client, code in (
        (boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      config=Config(signature_version=UNSIGNED)), "AccessDenied"),
        (boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=values["S3 access key"], aws_secret_access_key="not-the-secret"),
         "SignatureDoesNotMatch")):
        with pytest.raises(ClientError) as refused:
            client.list_objects_v2(Bucket="vamp-study")
        assert refused.value.response["Error"]["Code"] == code
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(env["AWS_ENDPOINT_URL"] + "/vamp-study/", timeout=10)
    assert refused.value.code == 403
    # MLflow
    url = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=10"
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"vamp:not-the-password").decode()}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert refused.value.code == 401
    good = base64.b64encode(f"vamp:{values['mlflow password']}".encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Basic {good}"}),
                                timeout=10) as response:
        assert response.status == 200
    # the UI's pages and the artifact proxy are behind the same wall
    for path in ("/", "/api/2.0/mlflow-artifacts/artifacts"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + path, timeout=10)
        assert refused.value.code == 401


def _mlflow_metadata(env: dict) -> Iterator[tuple[str, bytes]]:
    """Every experiment, run (params, tags, metric keys and values), registered model and model
    version (tags, aliases, source, description), read through the authenticated API."""
    from mlflow import MlflowClient

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = MlflowClient(env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
        for experiment in client.search_experiments():
            yield f"experiment {experiment.name}", repr(experiment).encode()
            for run in client.search_runs([experiment.experiment_id], max_results=10000):
                data = {"info": dict(run.info), "params": run.data.params, "tags": run.data.tags,
                        "metrics": run.data.metrics}
                yield f"run {run.info.run_name}", json.dumps(data, default=str).encode()
        for model in client.search_registered_models():
            yield f"registered model {model.name}", repr(model).encode()
            for version in client.search_model_versions(f"name = '{model.name}'"):
                yield f"model version {model.name}/{version.version}", repr(version).encode() + json.dumps(version.tags).encode()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _database(folder: Path) -> Iterator[tuple[str, bytes]]:
    """Every row of every table of MLflow's backend store (PostgreSQL)."""
    import psycopg
    from psycopg import sql

    state = json.loads((folder / "stack.json").read_text())["postgres"]
    conninfo = {"host": "127.0.0.1", "port": state["port"], "user": state["user"], "password": state["password"],
                "dbname": state["database"]}
    with psycopg.connect(**conninfo) as db:
        tables = [r[0] for r in db.execute("select tablename from pg_tables where schemaname = 'public'")]
        assert "runs" in tables and "params" in tables
        for table in tables:
            rows = db.execute(sql.SQL("select * from {}").format(sql.Identifier(table))).fetchall()
            yield f"table {table}", repr(rows).encode()


def _bucket(env: dict, values: dict) -> Iterator[tuple[str, bytes]]:
    """Every object of the stack's bucket: MLflow's artifacts and models, Ray's storage."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=values["S3 access key"],
                      aws_secret_access_key=values["S3 secret key"], region_name=env["AWS_DEFAULT_REGION"])
    for bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                yield f"s3://{bucket}/{item['Key']}", s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()


def _command_lines() -> Iterator[tuple[str, bytes]]:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                yield f"cmdline of {proc.name}", (proc / "cmdline").read_bytes()
            except OSError:
                pass


def test_no_credential_in_what_a_study_leaves(secret_stack, tmp_path: Path, data_cache: Path):
    env, values, folder = secret_stack
    wanted = needles(values)

    # the control: the search finds a secret planted in a scratch file (and only there)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "planted.log").write_bytes(b"some log line " + values["S3 secret key"].encode() + b"\n")
    (scratch / "clean.log").write_bytes(b"nothing here\n")
    assert search(files_under(scratch), wanted) == [(str(scratch / "planted.log"), "S3 secret key")]

    space = small_space(tmp_path, name="secrets")
    # The user exports the S3 keys themselves, as most do (not the stack's credentials file):
    # `study run` must keep them out of what Ray copies into trials and logs.
    run_env = {**env, "STUDY_HOME": str(tmp_path / "studies"), "STUDY_CACHE_DIR": str(data_cache),
               "STUDY_DATA_MIRROR": "", "AWS_SHARED_CREDENTIALS_FILE": "",
               "AWS_ACCESS_KEY_ID": values["S3 access key"], "AWS_SECRET_ACCESS_KEY": values["S3 secret key"]}
    result = study("run", space, "--json", env=run_env, timeout=600)
    outcome = json_out(result)
    assert outcome["champions"] and outcome["ray_address"] == env["RAY_ADDRESS"]
    assert outcome["storage"] == "s3://vamp-study/ray"

    leaks = []
    output = [("study stdout", result.stdout.encode()), ("study stderr", result.stderr.encode())]
    leaks += search(output, wanted)
    metadata = list(_mlflow_metadata(env))
    assert any(where.startswith("run ") for where, _ in metadata) and any(w.startswith("model version") for w, _ in metadata)
    leaks += search(metadata, wanted)
    leaks += search(_database(folder), wanted)
    objects = list(_bucket(env, values))
    assert any(k.endswith("/checkpoint.pt") for k, _ in objects)  # Ray storage
    assert any(k.endswith("weights.pt") for k, _ in objects)  # registered models' files
    leaks += search(objects, wanted)
    # what every process on the machine can read: command lines (MLflow's database URI, ...)
    leaks += search(_command_lines(), wanted)
    # files the study wrote locally (none expected besides the data cache it was given)
    if (tmp_path / "studies").exists():
        leaks += search(files_under(tmp_path / "studies"), wanted)

    # the servers' logs and Ray's session logs (after the stack stopped: shutdown logs too);
    # the state file, MLflow's auth config and Ray's token file hold credentials by design
    down = study("stack", "down", "--folder", folder, env={"STUDY_HOME": str(tmp_path / "studies")}, timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    by_design = [folder / "stack.json", folder / "mlflow" / "basic_auth.ini", folder / "mlflow" / "flask_secret",
                 Path(env["RAY_AUTH_TOKEN_PATH"]), Path(env["AWS_SHARED_CREDENTIALS_FILE"])]
    logs = list(files_under(folder, skip=by_design))
    assert any(where.endswith("mlflow.log") for where, _ in logs)
    assert any("/logs/raylet.out" in where for where, _ in logs)
    assert any("/logs/worker-" in where for where, _ in logs)  # the trials' own logs
    assert any("/logs/runtime_env_agent.log" in where for where, _ in logs)
    assert any("/s3/logs/weed." in where for where, _ in logs)  # the S3 server's log
    assert any("/s3/data/" in where for where, _ in logs)  # and its data: the objects, its own store
    # SeaweedFS logs the access key ID of its identity when it starts ("Added admin identity ...
    # accessKey=<key id>"), as AWS's access logs show key IDs: SigV4 sends the ID, never the
    # secret, with every request. The key ID is checked everywhere else, the secret everywhere.
    leaks += [(where, name) for where, name in search(logs, wanted)
              if not ("/s3/logs/weed." in where and name == "S3 access key")]

    assert not leaks, "credentials found:\n" + "\n".join(f"  {name} in {where}" for where, name in leaks)
