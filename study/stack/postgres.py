"""A private PostgreSQL 15 cluster: MLflow's backend store and the studies' Optuna storage.

Running as root: ``initdb`` and ``postgres`` refuse root, so both run as the ``postgres`` system
user, who must be able to enter the cluster's folder. When it cannot (a pytest ``tmp_path`` below
the mode-700 ``/tmp/pytest-of-root``, ``/root``), or the path is too long for the server's Unix
socket, the cluster lives in a fresh mode-700 ``/tmp/vamp-pg-*`` folder owned by that user,
linked as ``<folder>/cluster``; :meth:`PostgresServer.remove` deletes it.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import psutil
from pydantic import Field

from study.stack.process import HOST, MARKER, Server, wait_for

PG_BIN = Path(os.environ.get("STUDY_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


def as_postgres_user() -> dict:
    """``subprocess`` arguments that run a command as the ``postgres`` user when this process is
    root, nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(OS_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": entry.pw_dir, "LC_ALL": "C.UTF-8"}}


def cluster_folder(folder: Path) -> Path:
    """Where the cluster of ``folder`` lives (see the module)."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "cluster"
    if link.is_symlink() and link.resolve().is_dir():
        return link.resolve()
    reachable = len(str(folder)) <= 80 and (os.geteuid() != 0 or subprocess.run(
        ["test", "-x", str(folder)], cwd="/", **as_postgres_user()).returncode == 0)
    if reachable:
        return folder
    cluster = Path(tempfile.mkdtemp(prefix="vamp-pg-", dir="/tmp"))
    link.unlink(missing_ok=True)
    link.symlink_to(cluster)
    return cluster


class PostgresServer(Server):
    """A cluster on 127.0.0.1 with one role (password over TCP, scram-sha-256) owning the
    databases ``database`` (MLflow's) and ``optuna``; created on first start, kept until
    :meth:`remove`. Its Unix socket (trust) is in the cluster folder, private to the server user."""

    kind = "postgres"
    user: str = "vamp"
    password: str = Field(default_factory=lambda: secrets.token_urlsafe(18))
    database: str = "mlflow"
    cluster: Path | None = None
    databases: tuple[str, ...] = ("optuna",)

    def __init__(self, folder: Path | str, **fields) -> None:
        super().__init__(folder=Path(folder).resolve(), **fields)
        if self.cluster is None:
            self.cluster = cluster_folder(self.folder)

    @property
    def log_path(self) -> Path:
        return self.cluster / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path:
        return self.cluster / "data"

    @property
    def sqlalchemy_uri(self) -> str:
        """MLflow's backend store URI."""
        return self.database_uri(self.database)

    def database_uri(self, database: str) -> str:
        """``postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{HOST}:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        kwargs = as_postgres_user()
        kwargs["env"] = {**kwargs.get("env", self.environment()), MARKER: self.marker}
        result = subprocess.run(args, cwd=self.cluster, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                **kwargs)
        if result.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def launch(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            if os.geteuid() == 0:
                entry = pwd.getpwnam(OS_USER)
                os.chown(self.cluster, entry.pw_uid, entry.pw_gid)
            os.chmod(self.cluster, 0o700)
            self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        options = (f"-c listen_addresses={HOST} -c port={self.port} -c unix_socket_directories='{self.cluster}' "
                   "-c synchronous_commit=off")
        self._run(str(PG_BIN / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                  "-t", str(int(self.start_timeout)), "-o", options)
        self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self.created = psutil.Process(self.pid).create_time()  # so that a failed bootstrap stops it
        self._bootstrap()

    def _bootstrap(self) -> None:
        """Create (or update) the role and its databases, over the Unix socket."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=str(self.cluster), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone()
            conn.execute(sql.SQL(("ALTER" if exists else "CREATE") + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.user), sql.Literal(self.password)))
            for database in (self.database, *self.databases):
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(self.user)))

    def shutdown(self, main: psutil.Process) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")
        except RuntimeError:
            main.send_signal(2)  # SIGINT: the fast shutdown pg_ctl would have asked for
        wait_for(lambda: not self.running, self.stop_grace)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.cluster, ignore_errors=True)
        super().remove()
