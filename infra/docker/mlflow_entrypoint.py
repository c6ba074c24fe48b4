#!/usr/bin/env python3
"""Start the MLflow tracking server of a deployment with basic authentication, its credentials
taken from the environment only (never from a committed file, never from the command line).

Usage (the image's MLflow service): ``python mlflow_entrypoint.py mlflow server --app-name
basic-auth --host 0.0.0.0 ... [--artifacts-destination s3://BUCKET/mlflow]``, and after an upgrade
of MLflow ``python mlflow_entrypoint.py mlflow db upgrade`` (the backend store's schema, with the
same database URI; the auth database migrates itself when the server starts).

Reads
  POSTGRES_USER, POSTGRES_PASSWORD      the PostgreSQL role of MLflow
  POSTGRES_HOST (postgres), POSTGRES_PORT (5432)
  MLFLOW_DB (mlflow)                    the backend store database
  MLFLOW_AUTH_DB (mlflow_auth)          the basic-auth user store database
  MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD
                                        the admin, created on the first start only (MLflow
                                        3.17 reads these variables itself)
  MLFLOW_FLASK_SERVER_SECRET_KEY        signs the auth app's sessions / CSRF tokens
  MLFLOW_AUTH_DEFAULT_PERMISSION (READ) what a user may do with another user's experiments

Writes the auth config (``MLFLOW_AUTH_CONFIG_PATH``, default ``$TMPDIR/mlflow-auth/basic_auth.ini``,
mode 0600: it holds the database URI with its password) and runs the given command with the
backend store's URI added (``--backend-store-uri`` of ``mlflow server`` unless given, the URL of
``mlflow db upgrade``) and MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false.
Exit status 2 with a message naming the variable when one is missing.
"""
from __future__ import annotations

import configparser
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

DATABASE = ("POSTGRES_USER", "POSTGRES_PASSWORD")
REQUIRED = (*DATABASE, "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
DB_UPGRADE = ["mlflow", "db", "upgrade"]  # the schema migration: needs the database only


def database_uri(env: dict, database: str) -> str:
    user = quote(env["POSTGRES_USER"], safe="")
    password = quote(env["POSTGRES_PASSWORD"], safe="")
    host = env.get("POSTGRES_HOST", "postgres")
    port = env.get("POSTGRES_PORT", "5432")
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{database}"


def write_auth_config(env: dict, path: Path) -> Path:
    config = configparser.RawConfigParser()
    # MLflow reads this file with an interpolating ConfigParser: a literal '%' (URL-encoded
    # password characters) must be written as '%%'.
    config["mlflow"] = {
        "default_permission": env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
        "database_uri": database_uri(env, env.get("MLFLOW_AUTH_DB", "mlflow_auth")).replace("%", "%%"),
        "admin_username": env["MLFLOW_AUTH_ADMIN_USERNAME"].replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        config.write(handle)
    return path


def prepare(argv: list[str], env: dict) -> tuple[list[str], dict]:
    """The command and environment to exec (raises SystemExit(2) on missing settings)."""
    command = list(argv)
    missing = [name for name in (DATABASE if command == DB_UPGRADE else REQUIRED) if not env.get(name)]
    if missing:
        raise SystemExit(f"mlflow_entrypoint: set {', '.join(missing)} (from the .env file / Secret)")
    if not command:
        raise SystemExit("mlflow_entrypoint: no command given (e.g. mlflow server --app-name basic-auth ...)")
    env = dict(env)
    backend = database_uri(env, env.get("MLFLOW_DB", "mlflow"))
    if command == DB_UPGRADE:
        return [*command, backend], env
    path = Path(env.get("MLFLOW_AUTH_CONFIG_PATH")
                or Path(tempfile.gettempdir()) / "mlflow-auth" / "basic_auth.ini")
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(env, path))
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if "--backend-store-uri" not in command:
        command += ["--backend-store-uri", backend]
    return command, env


def main() -> None:
    command, env = prepare(sys.argv[1:], dict(os.environ))
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
