"""Integration tests of study.stack: real PostgreSQL, S3 (SeaweedFS) and MLflow server processes on
127.0.0.1 (no mocks). The shared servers start once per session (tests/integration/conftest.py)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

import psutil

from study.stack import HOST, LocalStack, MlflowServer, PostgresServer, S3Server, Server, free_port, port_in_use
from tests.processes import alive, snapshot, started_since
from tests.helpers import pg_connect_args, s3_keys

def _bucket(server: MlflowServer) -> str:
    """The bucket of an MLflow server's ``s3://bucket/prefix`` artifacts destination."""
    return server.artifacts_destination.removeprefix("s3://").split("/")[0]

def _strip_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_") or name in ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI",
                                               "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")

# --------------------------------------------------------------------------- helpers

def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind((HOST, port))

class _Failing(Server):
    """A real process that prints and exits before it is ready."""

    kind = "failing"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "print('boom: cannot start'); raise SystemExit(3)"]

def test_failed_start_raises_with_log_tail(tmp_path: Path):
    service = _Failing(folder=tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*boom: cannot start"):
        service.start(timeout=20)
    assert not service.running

def test_a_reused_pid_is_not_the_server(tmp_path: Path):
    me = psutil.Process()
    other = _Failing(folder=tmp_path, pid=me.pid, created=me.create_time() - 60)  # this PID, an earlier start
    assert not other.running and other.processes() == []
    other.stop()  # signals nothing: this test is still here to say so
    assert me.is_running()

# --------------------------------------------------------------------------- PostgreSQL

def test_postgres_accepts_password_and_refuses_wrong_one(postgres_server: PostgresServer):
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server.sqlalchemy_uri)
    assert (url.host, url.port, url.username, url.database) == (HOST, postgres_server.port, "vamp", "mlflow")
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("vamp", "mlflow")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=url.host, port=url.port, user=url.username, password="wrong", dbname=url.database)
    # Only 127.0.0.1: the server does not listen on the other addresses.
    listen = psycopg.connect(**pg_connect_args(postgres_server)).execute("SHOW listen_addresses").fetchone()[0]
    assert listen == HOST

# --------------------------------------------------------------------------- S3

def test_s3_boto3_put_and_list(s3_server: S3Server):
    s3_server.create_bucket("put-list")
    s3_server.create_bucket("put-list")  # idempotent
    client = s3_server.client()
    for key in ("a/1.txt", "a/2.txt", "b/3.txt"):
        client.put_object(Bucket="put-list", Key=key, Body=key.encode())
    assert s3_keys(s3_server, "put-list") == ["a/1.txt", "a/2.txt", "b/3.txt"]
    assert s3_keys(s3_server, "put-list", prefix="a/") == ["a/1.txt", "a/2.txt"]
    assert client.get_object(Bucket="put-list", Key="b/3.txt")["Body"].read() == b"b/3.txt"
    env = s3_server.env()
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == s3_server.endpoint_url
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"

def test_s3_pyarrow_filesystem_roundtrip(s3_server: S3Server):
    from pyarrow import fs

    s3_server.create_bucket("arrow")
    s3 = fs.S3FileSystem(
        endpoint_override=s3_server.endpoint_url.removeprefix("http://"), scheme="http",
        access_key=s3_server.access_key, secret_key=s3_server.secret_key, region=s3_server.region,
    )
    payload = os.urandom(3 * 1024 * 1024)
    with s3.open_output_stream("arrow/ray/ckpt/data.bin") as out:
        out.write(payload)
    with s3.open_input_stream("arrow/ray/ckpt/data.bin") as src:
        assert src.read() == payload
    assert s3_keys(s3_server, "arrow", prefix="ray/") == ["ray/ckpt/data.bin"]

def test_s3_refuses_wrong_and_missing_keys(s3_server: S3Server):
    import urllib.error
    import urllib.request

    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    s3_server.create_bucket("locked")
    s3_server.client().put_object(Bucket="locked", Key="secret.txt", Body=b"s")
    wrong = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                         aws_secret_access_key="not-the-secret", region_name="us-east-1")
    anonymous = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED))
    for client, code in ((wrong, "SignatureDoesNotMatch"), (anonymous, "AccessDenied")):
        with pytest.raises(ClientError) as refused:
            client.get_object(Bucket="locked", Key="secret.txt")
        assert refused.value.response["Error"]["Code"] == code
    # SeaweedFS's other servers (filer, volume, master) answer only requests signed with the
    # server's own JWT keys: the object cannot be had around the S3 gateway
    filer = f"http://{HOST}:{s3_server.ports['filer']}/buckets/locked/secret.txt"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(filer, timeout=10)
    assert refused.value.code == 401

def test_s3_keeps_objects_across_a_restart(tmp_path: Path):
    server = S3Server(tmp_path / "s3").start()
    try:
        server.create_bucket("kept")
        payload = os.urandom(6 * 1024 * 1024)  # a multipart upload
        server.client().upload_fileobj(io.BytesIO(payload), "kept", "big.bin")
        server.client().put_object(Bucket="kept", Key="small.txt", Body=b"small")
        etags = {k: server.client().head_object(Bucket="kept", Key=k)["ETag"] for k in ("big.bin", "small.txt")}
        for kill in (False, True):  # stopped, then killed outright
            if kill:
                server.process().kill()
            server.stop()
            server.start()
            assert {k: server.client().head_object(Bucket="kept", Key=k)["ETag"] for k in etags} == etags
            assert server.client().get_object(Bucket="kept", Key="big.bin")["Body"].read() == payload
        assert (tmp_path / "s3").stat().st_mode & 0o777 == 0o700  # the objects are readable in its files
    finally:
        server.remove()
    assert not (tmp_path / "s3").exists()

# --------------------------------------------------------------------------- MLflow

def test_mlflow_run_goes_to_postgres_and_artifact_to_s3(
    mlflow_server: MlflowServer, postgres_server: PostgresServer, s3_server: S3Server,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
):
    import mlflow
    import psycopg

    _strip_aws_env(monkeypatch)  # the client has no S3 credentials: artifacts are proxied
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment_id = client.create_experiment("servers-test")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id, run_name="servers-test-run")
    run_id = run.info.run_id
    client.log_metric(run_id, "loss", 0.5, step=1)
    artifact = tmp_path / "hello.txt"
    artifact.write_text("hello from the test")
    client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id)

    assert client.get_metric_history(run_id, "loss")[0].value == 0.5
    back = Path(client.download_artifacts(run_id, "hello.txt", dst_path=str(tmp_path / "down")))
    assert back.read_text() == "hello from the test"

    with psycopg.connect(**pg_connect_args(postgres_server)) as conn:
        row = conn.execute("SELECT name, experiment_id, status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
    assert row == ("servers-test-run", int(experiment_id), "FINISHED")

    keys = s3_keys(s3_server, _bucket(mlflow_server), prefix="mlflow/")
    assert f"mlflow/{experiment_id}/{run_id}/artifacts/hello.txt" in keys

def test_mlflow_server_rejects_foreign_host_header(mlflow_server: MlflowServer):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(mlflow_server.tracking_uri + "/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": "evil.example.com"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 403

def test_mlflow_basic_auth(mlflow_server: MlflowServer, postgres_server: PostgresServer, s3_server: S3Server,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow
    import urllib.error
    import urllib.request

    server = MlflowServer(postgres_server.sqlalchemy_uri, mlflow_server.artifacts_destination, env=s3_server.env(),
                          auth=("admin", "auth-test-password-1"), folder=tmp_path / "mlflow-auth")
    with server:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.tracking_uri + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert error.value.code == 401
        _strip_aws_env(monkeypatch)
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        assert mlflow.MlflowClient(tracking_uri=server.tracking_uri).search_experiments()

# --------------------------------------------------------------------------- stop and the stack

def test_stop_leaves_no_process_and_frees_port(tmp_path: Path):
    before = snapshot()
    servers = [S3Server(tmp_path / "s3").start(), PostgresServer(tmp_path / "pg").start()]
    try:
        started = started_since(before)
        assert len(started) >= 2 + 5  # weed; the postmaster and its background workers
        assert all(server.running and port_in_use(server.port) for server in servers)
        for server in servers:
            server.stop()
        assert not alive(started)
        assert not any(server.running or port_in_use(server.port) for server in servers)
        servers[0].stop()  # stopping twice is fine
    finally:
        for server in servers:
            server.remove()

def test_local_stack_stops_and_starts_again_from_its_state(tmp_path: Path):
    before = snapshot()
    stack = current = LocalStack.create(tmp_path / "stack").start()
    try:
        started = started_since(before)
        assert stack.status() == {"postgres": True, "s3": True, "mlflow": True}
        env = stack.env()
        assert env["MLFLOW_TRACKING_URI"] == stack.mlflow.tracking_uri
        assert env["AWS_ENDPOINT_URL"] == stack.s3.endpoint_url
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= env.keys()
        assert stack.storage_uri == "s3://vamp-study/ray"
        stack.s3.client().put_object(Bucket="vamp-study", Key="kept.txt", Body=b"kept")
        state_path = stack.save()
        assert oct(state_path.stat().st_mode & 0o777) == "0o600"
        assert all(service.log_path.exists() for service in stack.services)

        loaded = LocalStack.load(tmp_path / "stack")  # as another process would
        assert loaded.status() == stack.status() and loaded.env() == env
        loaded.stop()
        assert loaded.status() == stack.status() == {"postgres": False, "s3": False, "mlflow": False}
        assert not alive(started)
        assert not any(port_in_use(s.port) for s in stack.services)

        current = LocalStack.load(tmp_path / "stack")
        current.start()  # the same ports, credentials and data
        assert current.env() == env
        assert s3_keys(current.s3, "vamp-study") == ["kept.txt"]
    finally:
        current.remove()
