"""The local stack: PostgreSQL, S3 (bucket ``vamp-study``), MLflow (its store in PostgreSQL, its
artifacts proxied to ``s3://vamp-study/mlflow``) and, optionally, a Ray head whose workers get
the S3 endpoint and keys for Ray storage (``s3://vamp-study/ray``).

Everything lives under one folder: each server's data and log, and ``stack.json`` (mode 0600: it
holds the passwords and keys), from which a later process stops the servers or starts them again
with the same ports and credentials, so the addresses a user exported and the studies recorded
stay valid. Stopped, the stack keeps its data; :meth:`LocalStack.remove` deletes it.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from study.stack.mlflow import MlflowServer
from study.stack.postgres import PostgresServer
from study.stack.process import HOST, PortTaken, Server, write_private
from study.stack.ray import RayHead
from study.stack.s3 import S3Server

BUCKET = "vamp-study"


class StateUnreadable(ValueError):
    """A state file that this version cannot read (an earlier version's, or damaged)."""


def _pids(path: Path) -> str:
    """The PIDs a state file names, whatever its version, for the user to stop by hand."""
    try:
        pids = [str(v["pid"]) for v in json.loads(path.read_text()).values() if isinstance(v, dict) and v.get("pid")]
    except (ValueError, AttributeError):
        pids = []
    return f"PIDs {', '.join(pids)} and their children" if pids else "no PID recorded"


class LocalStack(BaseModel):
    state_file: ClassVar[str] = "stack.json"
    storage_uri: ClassVar[str] = f"s3://{BUCKET}/ray"

    folder: Path
    postgres: PostgresServer
    s3: S3Server
    mlflow: MlflowServer
    ray: RayHead | None = None
    credentials_file: bool = False  # the S3 keys reach clients as a file (S3Server.file_env)

    @classmethod
    def create(cls, folder: Path | str, *, auth: tuple[str, str] | None = None, ray: bool = False,
               num_cpus: int | None = None, credentials_file: bool = False) -> "LocalStack":
        """A stack in ``folder`` with fresh ports and credentials; ``auth`` turns on MLflow's
        basic authentication."""
        folder = Path(folder).resolve()
        postgres = PostgresServer(folder / "postgres")
        return cls(folder=folder, postgres=postgres, s3=S3Server(folder / "s3"), credentials_file=credentials_file,
                   mlflow=MlflowServer(postgres.sqlalchemy_uri, f"s3://{BUCKET}/mlflow", folder=folder / "mlflow",
                                       auth=auth),
                   ray=RayHead(folder / "ray", num_cpus=num_cpus) if ray else None)

    @classmethod
    def load(cls, folder: Path) -> "LocalStack | None":
        """The stack saved in ``folder`` (None when there is none)."""
        path = Path(folder) / cls.state_file
        if not path.is_file():
            return None
        try:
            return cls.model_validate_json(path.read_text())
        except (ValueError, TypeError) as error:
            raise StateUnreadable(f"{path}: not a stack this version of study can read ({str(error)[:200]}); "
                                  f"if its servers still run, stop them ({_pids(path)}), then remove the "
                                  "file, or the folder with the data") from None

    def save(self) -> Path:
        return write_private(self.folder / self.state_file, self.model_dump_json(indent=2))

    @property
    def services(self) -> list[Server]:
        return [s for s in (self.postgres, self.s3, self.mlflow, self.ray) if s is not None]

    def start(self, save: bool = False) -> "LocalStack":
        """Start the servers in order, each given what it needs of the others (the credentials may
        have changed since the stack was saved); on failure stop what was started. With ``save``,
        the state is saved before each server starts (a `down` finds it even if this process is
        killed meanwhile: every server's processes carry its marker) and once all run."""
        self.mlflow.backend_store_uri = self.postgres.sqlalchemy_uri
        self.mlflow.env = self.s3.env()
        if self.ray is not None:
            self.ray.env = {k: v for k, v in self.s3_env().items() if k.startswith("AWS_")}
        taken = [f"{s.kind} {port}" for s in self.services if not s.running for port in s.ports_taken()]
        if taken:  # before anything starts
            raise PortTaken(f"ports of {HOST} in use by another program: {', '.join(taken)}")
        try:
            for service in self.services:
                if save:
                    self.save()
                service.start()
                if service is self.s3:
                    self.s3.create_bucket(BUCKET)
        except BaseException:
            with contextlib.suppress(Exception):  # the failed start is what the user needs to see
                self.stop()
            raise
        if save:
            self.save()
        return self

    def stop(self) -> None:
        """Stop every server, the last started first; their data stays."""
        errors = []
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as error:  # noqa: BLE001 - stop the others anyway
                errors.append(error)
        if errors:
            raise RuntimeError(f"stopping the stack: {errors}")

    def remove(self) -> None:
        """Stop the stack and delete its data (the PostgreSQL cluster, the objects, Ray's folders)."""
        self.stop()
        for service in self.services:
            service.remove()

    def status(self) -> dict[str, bool]:
        """Whether each server runs, by kind."""
        return {s.kind: s.running for s in self.services}

    def s3_env(self) -> dict[str, str]:
        return self.s3.file_env(self.s3.folder / "aws_credentials") if self.credentials_file else self.s3.env()

    def env(self) -> dict[str, str]:
        """What a user exports: MLflow's URI (and credentials), the S3 endpoint and keys, the
        storage of Ray (STUDY_STORAGE) and Optuna (STUDY_OPTUNA_STORAGE), and the Ray head's."""
        env = {**self.s3_env(), **self.mlflow.client_env(), "STUDY_STORAGE": self.storage_uri,
               "STUDY_OPTUNA_STORAGE": self.postgres.database_uri("optuna")}
        return {**env, **(self.ray.client_env() if self.ray is not None else {})}
