"""Where a study's parts go: tracking server, Optuna storage, Ray storage, Ray cluster.

Each comes from (first wins): the command-line flag, the usual environment variable
(MLFLOW_TRACKING_URI, STUDY_OPTUNA_STORAGE, STUDY_STORAGE, RAY_ADDRESS), the spec file (tracking
and storage only), the embedded default. The embedded default keeps everything under one
folder, STUDY_HOME (default ./studies):
  studies/mlflow.db      MLflow backend store (SQLite)
  studies/artifacts/     MLflow artifacts
  studies/optuna.db      the Optuna storage: one Optuna study per (model, prior) group
  studies/ray/           Ray storage: the study's record, experiment state and checkpoints
A deployment with a tracking server sets STUDY_OPTUNA_STORAGE to a database of its own (e.g.
postgresql+psycopg://user:password@host/optuna; `study stack up` exports one); without it the
Optuna storage is the SQLite file above, on the driver's machine.
S3 endpoints and credentials come from the standard AWS variables only (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...), never from a spec file and never into logs or tracked params.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import InputError


@dataclass(frozen=True)
class Targets:
    tracking_uri: str
    optuna_storage: str  # an SQLAlchemy URL
    storage: str  # a local folder or s3://bucket/prefix
    address: str | None  # a Ray cluster, or None for a local Ray instance
    home: Path  # the embedded default's folder

    @property
    def local_tracking(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    def artifact_location(self, study: str) -> str | None:
        """Artifacts of a local (SQLite) store go under STUDY_HOME; a tracking server decides its own."""
        return (self.home / "artifacts" / study).as_uri() if self.local_tracking else None

    def public(self) -> dict:
        """What may be shown and tracked: the locations without any user:password@."""
        return {"tracking_uri": without_userinfo(self.tracking_uri),
                "optuna_storage": without_userinfo(self.optuna_storage),
                "storage": without_userinfo(self.storage), "ray_address": self.address or "local"}


def home() -> Path:
    return Path(os.environ.get("STUDY_HOME", "studies")).expanduser().resolve()


def resolve_tracking_uri(flag: str | None = None, from_spec: str | None = None) -> str:
    return (flag or os.environ.get("MLFLOW_TRACKING_URI") or from_spec
            or f"sqlite:///{home() / 'mlflow.db'}")


def require_existing_store(uri: str) -> str:
    """For the read-only commands (`study status`, `study pull`, `study score models:/...`): refuse
    an SQLite tracking URI whose file does not exist, which MLflow would otherwise create as an
    empty store (with its artifact folders). `study run` creates the store, so it does not call
    this. Other URIs (http(s) servers, other databases) are left to MLflow. Returns `uri`."""
    if uri.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if database and database != ":memory:" and not Path(database).is_file():
            raise InputError(f"there is no tracking store at {without_userinfo(uri)} ({Path(database).resolve()} "
                             "does not exist): run a study first (`study run SPACE`), or check --tracking-uri "
                             "and MLFLOW_TRACKING_URI")
    return uri


def resolve_optuna_storage(flag: str | None = None) -> str:
    return flag or os.environ.get("STUDY_OPTUNA_STORAGE") or f"sqlite:///{home() / 'optuna.db'}"


def resolve_storage(flag: str | None = None, from_spec: str | None = None) -> str:
    store = flag or os.environ.get("STUDY_STORAGE") or from_spec or str(home() / "ray")
    return store if "://" in store else str(Path(store).expanduser().resolve())


def resolve(spec, *, tracking_uri: str | None = None, optuna_storage: str | None = None,
            storage: str | None = None, address: str | None = None) -> Targets:
    return Targets(resolve_tracking_uri(tracking_uri, spec.tracking.uri), resolve_optuna_storage(optuna_storage),
                   resolve_storage(storage, spec.storage.path), address or os.environ.get("RAY_ADDRESS") or None,
                   home())


def without_userinfo(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
