"""Session-scoped fixtures that start the real servers of :mod:`study.stack` once per test
session on 127.0.0.1 and stop them at teardown (also when tests fail).

- ``postgres_server``: a private PostgreSQL cluster (role ``vamp``, database ``mlflow``).
- ``s3_server``: an S3 server (SeaweedFS) with generated keys.
- ``mlflow_server``: MLflow tracking server, backend store in ``postgres_server``, artifacts
  proxied to ``s3://<MLFLOW_BUCKET>/mlflow`` on ``s3_server``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from study.stack import MlflowServer, PostgresServer, S3Server

from tests.helpers import MLFLOW_BUCKET, embedded_env


@pytest.fixture(scope="session")
def servers_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the session servers' logs (PostgreSQL's cluster may be elsewhere:
    see :class:`study.stack.PostgresServer`)."""
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def postgres_server(servers_folder: Path) -> Iterator[PostgresServer]:
    """A running private PostgreSQL cluster; removed (stopped and deleted) at teardown."""
    server = PostgresServer(servers_folder / "postgres")
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def s3_server(servers_folder: Path) -> Iterator[S3Server]:
    """A running S3 server; removed (stopped, its objects deleted) at teardown."""
    server = S3Server(servers_folder / "s3")
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def mlflow_server(postgres_server: PostgresServer, s3_server: S3Server, servers_folder: Path) -> Iterator[MlflowServer]:
    """A running MLflow tracking server (PostgreSQL backend store, artifacts proxied to
    ``s3://vamp-mlflow/mlflow``); stopped at teardown."""
    s3_server.create_bucket(MLFLOW_BUCKET)
    server = MlflowServer(
        postgres_server.sqlalchemy_uri,
        f"s3://{MLFLOW_BUCKET}/mlflow",
        env=s3_server.env(),
        folder=servers_folder / "mlflow",
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def home(tmp_path: Path, data_cache: Path) -> dict[str, str]:
    """The environment of a study on the embedded default under tmp_path/studies."""
    return embedded_env(tmp_path, data_cache)
