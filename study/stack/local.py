"""The local stack: PostgreSQL, S3 (bucket ``vamp-study``), MLflow (its store in PostgreSQL, its
artifacts proxied to ``s3://vamp-study/mlflow``) and, optionally, a Ray head whose workers get
the S3 endpoint and keys for Ray storage (``s3://vamp-study/ray``).

Everything lives under one folder: each server's data and log, and ``stack.json`` (mode 0600: it
holds the passwords and keys), from which a later process stops the servers or starts them again
with the same ports and credentials, so the addresses a user exported and the studies recorded
stay valid. Stopped, the stack keeps its data; :meth:`LocalStack.remove` deletes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from study.stack.mlflow import MlflowServer
from study.stack.postgres import PostgresServer
from study.stack.process import Server, write_private
from study.stack.ray import RayHead
from study.stack.s3 import S3Server

BUCKET = "vamp-study"


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
        return cls.model_validate_json(path.read_text()) if path.is_file() else None

    def save(self) -> Path:
        return write_private(self.folder / self.state_file, self.model_dump_json(indent=2))

    @property
    def services(self) -> list[Server]:
        return [s for s in (self.postgres, self.s3, self.mlflow, self.ray) if s is not None]

    def start(self) -> "LocalStack":
        """Start the servers in order, each given what it needs of the others (the credentials may
        have changed since the stack was saved); on failure stop what was started."""
        self.mlflow.backend_store_uri = self.postgres.sqlalchemy_uri
        self.mlflow.env = self.s3.env()
        try:
            self.postgres.start()
            self.s3.start()
            self.s3.create_bucket(BUCKET)
            self.mlflow.start()
            if self.ray is not None:
                self.ray.env = {k: v for k, v in self.s3_env().items() if k.startswith("AWS_")}
                self.ray.start()
        except BaseException:
            self.stop()
            raise
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
