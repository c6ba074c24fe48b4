"""infra/k8s's servers run here with the real programs on 127.0.0.1: a PostgreSQL 15 cluster set up by
the init ConfigMap's script and probed with the StatefulSet's own probe and preStop commands; the
MLflow Deployment's init container and own command line (through infra/docker/mlflow_entrypoint.py,
artifacts to SeaweedFS) answering Host headers of the in-cluster name and refusing others; the init
Job's command creating the study user; the fill Job's command making a cache that ``load_dataset``
reads."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pytest

from study.stack import PostgresServer, S3Server, Server
from study.stack.postgres import PG_BIN, as_postgres_user
from tests.conftest import MIRRORED_DATASETS
from tests.infra.infra_files import (
    DOCKERFILE,
    ROOT,
)
from tests.infra.k8s_services import (
    CREDENTIALS,
    FILL,
    MLFLOW,
    MLFLOW_INIT,
    POSTGRES,
    SERVERS,
    arg_after,
    config_env,
    documents,
    pod,
    resolve_env,
)

# --------------------------------------------------------------------------- live checks

def tool_env(**extra: str) -> dict[str, str]:
    """A clean environment for a program of the manifests: PostgreSQL's and this venv's tools on PATH."""
    path = f"{PG_BIN}:{Path(sys.executable).parent}:/usr/bin:/bin"
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8", **extra}


def local_argv(argv: list[str]) -> list[str]:
    """A container's command line run here: no tini, this Python, the image's /opt/vamp-study files
    from where the Dockerfile copies them."""
    copied = {}
    for line in re.findall(r"^COPY (.+ /opt/vamp-study/)$", DOCKERFILE.read_text(), flags=re.M):
        copied.update({f"/opt/vamp-study/{Path(s).name}": str(ROOT / s) for s in line.split()[:-1]})
    argv = argv[2:] if argv[:2] == ["tini", "--"] else argv
    return [sys.executable if a == "python" else copied.get(a, a) for a in argv]


@pytest.fixture(scope="module")
def secret_values() -> dict[str, dict[str, str]]:
    """Values for the two Secrets (the S3 key is the S3 server's, set by the s3 fixture)."""
    return {
        SERVERS: {"POSTGRES_USER": "vamp_k8s", "POSTGRES_PASSWORD": secrets.token_urlsafe(12) + "%@/:",
                  "MLFLOW_ADMIN_USERNAME": "admin", "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)},
        CREDENTIALS: {"MLFLOW_TRACKING_USERNAME": "study", "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18)},
    }


@pytest.fixture(scope="module")
def postgres(tmp_path_factory, secret_values):
    """PostgreSQL as the StatefulSet makes it: POSTGRES_USER a superuser owning POSTGRES_DB, then the
    init ConfigMap's script run with the container's environment."""
    import psycopg

    values = secret_values[SERVERS]
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), user=values["POSTGRES_USER"],
                            password=values["POSTGRES_PASSWORD"], databases=())
    try:
        server.start()
        with psycopg.connect(host=str(server.cluster), port=server.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{server.user}" SUPERUSER')  # as the image creates POSTGRES_USER
        stateful = documents()[POSTGRES]
        container = pod(stateful)["containers"][0]
        script = server.folder / "10-databases.sh"
        script.write_text(documents()["ConfigMap/vamp-study-postgres-init"]["data"]["10-databases.sh"])
        script.chmod(next(v for v in pod(stateful)["volumes"] if v["name"] == "init")["configMap"]["defaultMode"])
        env = tool_env(**resolve_env(container, config_env(), secret_values), PGHOST="127.0.0.1",
                       PGPORT=str(server.port), PGPASSWORD=server.password)
        result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        yield server
    finally:
        server.remove()


def test_postgres_init_script_makes_the_databases_mlflow_and_optuna_use(postgres):
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname="postgres") as conn:
        owners = dict(conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall())
    assert {name: owners.get(name) for name in ("mlflow", "mlflow_auth", "optuna")} == dict.fromkeys(
        ("mlflow", "mlflow_auth", "optuna"), postgres.user)


def probe(command: list[str], port: int, socket_folder: Path, user: str) -> int:
    """Exit status of a probe's command against a local server (its port and socket folder instead
    of the pod's)."""
    command = [part.replace("-p 5432", f"-p {port}").replace("/var/run/postgresql", str(socket_folder))
               for part in command]
    env = tool_env(POSTGRES_USER=user, PGPORT=str(port))
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_postgres_probes_and_prestop_work_on_a_real_server(tmp_path):
    container = pod(documents()[POSTGRES])["containers"][0]
    ready, alive = container["readinessProbe"]["exec"]["command"], container["livenessProbe"]["exec"]["command"]
    assert "-p 5432" in ready[-1]
    server = PostgresServer(tmp_path / "pg")
    try:
        server.start()
        assert probe(ready, server.port, server.cluster, server.user) == 0
        assert probe(alive, server.port, server.cluster, server.user) == 0
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        as_postgres = {**as_postgres_user(), "env": tool_env(PGDATA=str(server.data_dir))}
        result = subprocess.run(pre_stop, cwd="/", capture_output=True, text=True, timeout=60, **as_postgres)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not server.running
        assert probe(ready, server.port, server.cluster, server.user) != 0
        assert probe(alive, server.port, server.cluster, server.user) != 0
    finally:
        server.remove()


@pytest.fixture(scope="module")
def s3(tmp_path_factory, secret_values):
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        server.start()
        server.create_bucket(urlsplit(config_env()["STUDY_STORAGE"]).netloc)  # s3.yaml's -bucket
        secret_values[CREDENTIALS].update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        yield server
    finally:
        server.remove()


class CommandServer(Server):
    """A manifest's command line as a server on 127.0.0.1 (ready when /health answers)."""

    kind: ClassVar[str] = "mlflow-deployment"
    start_timeout: ClassVar[float] = 180.0
    argv: list[str] = []
    env: dict[str, str] = {}

    def command(self) -> list[str]:
        return self.argv

    def environment(self) -> dict[str, str]:
        return self.env

    def ready(self) -> bool:
        return request(self.port, "/health")[0] == 200


def request(port: int, path: str, host: str | None = None, auth: tuple[str, str] | None = None,
            method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of an HTTP request to 127.0.0.1:port with the given Host header."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory, postgres, s3, secret_values):
    """The Deployment's pod, run here: its init container (the schema migration) to its end, then
    its container: their command lines (the host and port aside) and environments, the Secrets' and
    ConfigMap's values resolved, PostgreSQL and S3 local."""
    folder = tmp_path_factory.mktemp("mlflow")
    configmap = {**config_env(), "AWS_ENDPOINT_URL": s3.endpoint_url}
    for init in pod(documents()[MLFLOW])["initContainers"]:
        env = {**resolve_env(init, configmap, secret_values), "POSTGRES_HOST": "127.0.0.1",
               "POSTGRES_PORT": str(postgres.port)}
        result = subprocess.run(local_argv(init["command"]) + init["args"], env=tool_env(**env, TMPDIR=str(folder)),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"init container {init['name']}: {result.stdout}{result.stderr}"
    container = pod(documents()[MLFLOW])["containers"][0]
    env = resolve_env(container, configmap, secret_values)
    assert env["POSTGRES_HOST"] == "postgres"
    env.update(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(postgres.port))
    server = CommandServer(folder=folder, env=tool_env(**env, TMPDIR=str(folder)))
    args = list(container["args"])
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(server.port)
    server.argv = local_argv(container["command"]) + args
    try:
        server.start()
        yield server
    finally:
        server.stop()


CLUSTER_HOST = "mlflow.vamp-study.svc.cluster.local:5000"


def test_mlflow_deployment_answers_the_cluster_name_and_the_init_job_creates_the_study_user(mlflow, s3, secret_values):
    assert urlsplit(config_env()["MLFLOW_TRACKING_URI"]).netloc == CLUSTER_HOST
    assert request(mlflow.port, "/health", host=CLUSTER_HOST) == (200, b"OK")
    # The init Job's command, with its environment (MLflow here rather than at the Service's name).
    job = pod(documents()[MLFLOW_INIT])["containers"][0]
    env = resolve_env(job, {**config_env(), "MLFLOW_TRACKING_URI": mlflow.url}, secret_values)
    said = []
    for _ in range(2):  # idempotent
        result = subprocess.run(local_argv(job["command"]), env=tool_env(**env), capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        said.append(result.stdout.strip())
        passwords = (secret_values[SERVERS]["MLFLOW_ADMIN_PASSWORD"], env["MLFLOW_TRACKING_PASSWORD"])
        assert not any(p in result.stdout + result.stderr for p in passwords)
    assert said == ["created MLflow user 'study'", "MLflow user 'study' exists"]
    # The study user, by the Service's name: an experiment, a run and an artifact through the proxy.
    study = tuple(secret_values[CREDENTIALS][k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))
    status, body = request(mlflow.port, "/api/2.0/mlflow/experiments/create", CLUSTER_HOST, study, "POST",
                           json.dumps({"name": "k8s-manifest-check"}).encode())
    assert status == 200, body
    experiment = json.loads(body)["experiment_id"]
    status, body = request(mlflow.port, "/api/2.0/mlflow/runs/create", CLUSTER_HOST, study, "POST",
                           json.dumps({"experiment_id": experiment}).encode())
    assert status == 200, body
    run = json.loads(body)["run"]["info"]["run_id"]
    path = f"{experiment}/{run}/artifacts/hello.txt"
    status, body = request(mlflow.port, f"/api/2.0/mlflow-artifacts/artifacts/{path}", CLUSTER_HOST, study, "PUT",
                           b"hello from the cluster")
    assert status == 200, body
    destination = arg_after(pod(documents()[MLFLOW])["containers"][0]["args"], "--artifacts-destination")
    bucket, prefix = urlsplit(destination)[1:3]
    stored = s3.client().get_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{path}")["Body"].read()
    assert stored == b"hello from the cluster"
    # Without credentials: 401.
    assert request(mlflow.port, f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}", CLUSTER_HOST)[0] == 401


@pytest.mark.parametrize("host", ["mlflow.elsewhere.svc.cluster.local:5000", "10.1.2.3:5000", "attacker.example"])
def test_mlflow_deployment_refuses_an_unlisted_host(mlflow, secret_values, host):
    admin = tuple(secret_values[SERVERS][k] for k in ("MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD"))
    path = "/api/2.0/mlflow/experiments/get?experiment_id=0"
    assert request(mlflow.port, path, CLUSTER_HOST, admin)[0] == 200
    status, body = request(mlflow.port, path, host, admin)
    assert status == 403 and b"Invalid Host header" in body


def test_fill_job_command_makes_a_cache_that_load_dataset_reads(shared_datasets, tmp_path, monkeypatch):
    """The Job's `study data fetch all`, here for each dataset the mirror holds (the others' URLs
    cannot be reached from this machine), into a folder standing for the volume."""
    from trainables.data import load_dataset, pipeline
    from trainables.data.registry import get_spec
    from trainables.errors import DataError

    container = pod(documents()[FILL])["containers"][0]
    volume = tmp_path / "volume"
    env = resolve_env(container, {**config_env(), "STUDY_CACHE_DIR": str(volume)}, {})
    study = str(Path(sys.executable).with_name("study"))  # the image's entrypoint
    for name in MIRRORED_DATASETS:
        args = [name if a == "all" else a for a in container["args"]]
        result = subprocess.run([study, *args], env=tool_env(**env, STUDY_DATA_MIRROR=str(shared_datasets)),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in volume.iterdir()) == sorted(f"{n}.npz" for n in MIRRORED_DATASETS)
    # The driver: the volume at STUDY_CACHE_DIR, and no way to fetch a file.
    def no_fetching(dataset, source, **_):
        raise DataError(f"{dataset}: {source.filename} would be fetched")

    monkeypatch.setattr(pipeline, "acquire", no_fetching)
    monkeypatch.setenv("STUDY_CACHE_DIR", str(volume))
    for name in MIRRORED_DATASETS:
        splits = load_dataset(name)
        assert [len(split) for split in (splits.train, splits.val, splits.test)] == list(get_spec(name).sizes)
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "elsewhere"))  # a cache the Job did not fill
    with pytest.raises(DataError):
        load_dataset("freyfaces")
