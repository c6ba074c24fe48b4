"""infra/docker: the Dockerfile (parsed with ``dockerfile-parse``) and the MLflow entrypoint, whose
auth config MLflow's own reader accepts."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from tests.infra.infra_files import DOCKERFILE, INFRA, ROOT


def _load_entrypoint():
    spec = importlib.util.spec_from_file_location("mlflow_entrypoint", INFRA / "docker" / "mlflow_entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_entrypoint_writes_an_auth_config_mlflow_reads(tmp_path, monkeypatch):
    entry = _load_entrypoint()
    env = {"POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": "p%ss:w@rd/1", "POSTGRES_HOST": "db",
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "secret",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "a" / "auth.ini")}
    command, out_env = entry.prepare(["mlflow", "server", "--app-name", "basic-auth"], env)
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend == "postgresql+psycopg://mlflow:p%25ss%3Aw%40rd%2F1@db:5432/mlflow"
    assert out_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    path = Path(out_env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "secret" not in path.read_text()  # the admin password stays in the environment

    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "secret")
    config = read_auth_config()
    assert config.database_uri == "postgresql+psycopg://mlflow:p%25ss%3Aw%40rd%2F1@db:5432/mlflow_auth"
    assert config.admin_username == "admin" and config.admin_password == "secret"
    assert config.default_permission == "READ"


def test_mlflow_entrypoint_refuses_missing_credentials():
    result = subprocess.run([sys.executable, str(INFRA / "docker" / "mlflow_entrypoint.py"), "true"],
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, timeout=30)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr


def test_mlflow_db_upgrade_through_the_entrypoint_migrates_the_backend_store(tmp_path):
    """The operator guide's upgrade step, `mlflow db upgrade` run by the image's entrypoint, on a
    real PostgreSQL: the entrypoint adds the backend store's URL, and MLflow brings an empty
    database to its newest schema (run again: nothing to do, still exit 0)."""
    import psycopg

    from study.stack import PostgresServer

    server = PostgresServer(tmp_path / "postgres", databases=())
    server.start()
    try:
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
               "POSTGRES_USER": server.user, "POSTGRES_PASSWORD": server.password, "POSTGRES_HOST": "127.0.0.1",
               "POSTGRES_PORT": str(server.port)}  # the database alone: no MLflow admin needed
        for _ in range(2):
            result = subprocess.run([sys.executable, str(INFRA / "docker" / "mlflow_entrypoint.py"), "mlflow", "db",
                                     "upgrade"], capture_output=True, text=True, env=env, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
            assert server.password not in result.stdout + result.stderr
        with psycopg.connect(server.database_uri("mlflow").replace("+psycopg", "")) as conn:
            tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"experiments", "runs", "registered_models", "alembic_version"} <= tables
    finally:
        server.remove()


def _parse_dockerfile(text: str):
    import dockerfile_parse  # the test extra installs it
    parser = dockerfile_parse.DockerfileParser(fileobj=__import__("io").BytesIO(text.encode()))
    return parser


def dockerfile_problems(text: str) -> list[str]:
    parser = _parse_dockerfile(text)
    problems = []
    instructions = parser.structure
    if not parser.baseimage or not re.match(r"(python:3\.11|nvidia/cuda:)", parser.baseimage):
        problems.append(f"base image {parser.baseimage!r} is not Python 3.11 / CUDA")
    args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[-1] for i in instructions if i["instruction"] == "ARG"}
    runs = [i["value"] for i in instructions if i["instruction"] == "RUN"]
    if args.get("TORCH_VERSION") != "2.13.0" or not any("torch==${TORCH_VERSION}" in r for r in runs):
        problems.append("torch is not installed pinned to 2.13.0")
    if not any(re.search(r"pip install \.(\s|$)", r) for r in runs):
        problems.append("the project is not installed with `pip install .`")
    users = [i["value"].split(":")[0] for i in instructions if i["instruction"] == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image does not run as a non-root user")
    entry = [i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1])[-1] != "study":
        problems.append("the entrypoint is not `study`")
    return problems


def test_dockerfile_builds_the_project_image():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject, "pyproject's torch pin moved: update infra/docker/Dockerfile"
    # The dashboard and Jobs API (ray[default]) that KubeRay's submitter and probes need come with the project.
    assert re.search(r'"ray\[default,tune\]==[^"]+"', pyproject), "the image needs ray[default] of the pinned Ray"
    # Every file the Dockerfile copies is in the build context (its .dockerignore lets it through).
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text()
    for copy_line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for source in copy_line.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded by the .dockerignore"


def test_dockerfile_checks_reject_a_broken_dockerfile():
    text = DOCKERFILE.read_text()
    broken = (text.replace("USER study:study", "USER root")
                  .replace("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.5.0")
                  .replace('"study"]', '"bash"]'))
    problems = dockerfile_problems(broken)
    assert len(problems) == 3, problems


