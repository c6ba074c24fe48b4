"""`study stack up|down|status`: the local development stack (:class:`study.stack.LocalStack`,
the same servers the integration tests start); this module adds the command line and the
credentials.

State: ``FOLDER/stack.json`` (mode 0600: it holds the passwords), default ``$STUDY_HOME/stack``.
`up` prints the environment to export (``eval "$(study stack up)"``); run again after `down`, it
starts the same servers on the same ports with the same credentials and data. `down` stops every
process the stack started and keeps the data; `down --purge` deletes it. `status` reports each
server.

Credentials: the MLflow admin user is ``vamp`` with a generated password; the S3 keys and the
PostgreSQL password are generated as well. Each may be given through the environment
(STUDY_STACK_MLFLOW_PASSWORD, STUDY_STACK_S3_ACCESS_KEY, STUDY_STACK_S3_SECRET_KEY,
STUDY_STACK_POSTGRES_PASSWORD), never on the command line (where `ps` shows it). The S3 keys are
exported as a file (AWS_SHARED_CREDENTIALS_FILE, mode 0600), not as AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY: Ray Tune copies those two from the driver's environment into every trial's
runtime environment, and Ray's runtime-env agent writes that to its log in clear.
"""
from __future__ import annotations

import json
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from study.command import command
from study.stack.local import LocalStack
from trainables.errors import InputError

stack_app = typer.Typer(no_args_is_help=True,
                        help="The local development stack: PostgreSQL, S3, MLflow (with auth) and a Ray head.")

MLFLOW_USER = "vamp"


def default_folder() -> Path:
    from study import settings

    return settings.home() / "stack"


def _folder(folder: Path | None) -> Path:
    return (folder or default_folder()).expanduser().resolve()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(stack: LocalStack) -> dict:
    """Each service: up or down, where, its PID and log."""
    urls = {"postgres": f"postgresql://{stack.postgres.user}@127.0.0.1:{stack.postgres.port}/{stack.postgres.database}",
            "s3": stack.s3.endpoint_url, "mlflow": stack.mlflow.tracking_uri,
            "ray": stack.ray.address if stack.ray else ""}
    return {s.kind: {"up": s.running, "pid": s.pid, "port": s.port, "log": str(s.log_path), "url": urls[s.kind]}
            for s in stack.services}


def exports(env: dict) -> str:
    """``export NAME=value`` lines, shell-quoted."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))


def up(folder: Path, *, num_cpus: int | None = None, mlflow_password: str | None = None,
       s3_keys: tuple[str, str] | None = None, postgres_password: str | None = None, auth: bool = True) -> LocalStack:
    """Start the stack in ``folder`` (again, with its ports, credentials and data, when it ran
    there before) and save its state; refuses when one runs there already."""
    stack = LocalStack.load(folder)
    if stack is not None and any(stack.status().values()):
        raise InputError(f"--folder: a stack is already running from {folder} "
                         f"(`study stack status --folder {folder}`; stop it with `study stack down`)")
    if stack is None:
        stack = LocalStack.create(folder, ray=True, credentials_file=True)
    if num_cpus is not None:
        stack.ray.num_cpus = num_cpus
    password = mlflow_password or (stack.mlflow.auth or (None, secrets.token_urlsafe(18)))[1]
    if stack.mlflow.auth and stack.mlflow.auth[1] != password:
        # MLflow keeps the admin's first password in its user store: start a fresh one.
        (stack.mlflow.folder / "basic_auth.db").unlink(missing_ok=True)
    stack.mlflow.auth = (MLFLOW_USER, password) if auth else None
    if s3_keys:
        stack.s3.access_key, stack.s3.secret_key = s3_keys
    if postgres_password:
        stack.postgres.password = postgres_password
    stack.start()
    try:
        stack.save()
    except BaseException:
        stack.stop()
        raise
    return stack


def down(folder: Path, *, purge: bool = False) -> tuple[bool, LocalStack | None]:
    """Stop the stack recorded in ``folder``; with ``purge`` delete its data and folder too.
    Returns (whether anything was running, the stack or None)."""
    stack = LocalStack.load(folder)
    was_running = stack is not None and any(stack.status().values())
    if stack is not None:
        stack.remove() if purge else stack.stop()
    if purge:
        shutil.rmtree(folder, ignore_errors=True)
    return was_running, stack


FolderOption = typer.Option(None, "--folder", help="the stack's folder (default: $STUDY_HOME/stack)")


@command(stack_app, "up")
def up_command(
    folder: Optional[Path] = FolderOption,
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the Ray head (default: all)"),
    auth: bool = typer.Option(True, "--auth/--no-auth", help="MLflow basic authentication (user vamp)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> str:
    """Start PostgreSQL, S3, MLflow and a Ray head; print the environment to export."""
    import os

    folder = _folder(folder)
    keys = (os.environ.get("STUDY_STACK_S3_ACCESS_KEY"), os.environ.get("STUDY_STACK_S3_SECRET_KEY"))
    stack = up(folder, num_cpus=num_cpus, auth=auth,
               mlflow_password=os.environ.get("STUDY_STACK_MLFLOW_PASSWORD") or None,
               s3_keys=keys if all(keys) else None,
               postgres_password=os.environ.get("STUDY_STACK_POSTGRES_PASSWORD") or None)
    env = stack.env()
    _say(f"stack up in {folder}: MLflow {env['MLFLOW_TRACKING_URI']}, S3 {env['AWS_ENDPOINT_URL']}, "
         f"Ray {env['RAY_ADDRESS']}; stop it with `study stack down --folder {folder}`")
    if as_json:
        return json.dumps({"folder": str(folder), "state_file": str(folder / LocalStack.state_file), "env": env,
                           "services": describe(stack)})
    return exports(env)


@command(stack_app, "status")
def status_command(
    folder: Optional[Path] = FolderOption,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> str:
    """Each service of the stack: up or down, its URL or address, PID and log."""
    folder = _folder(folder)
    stack = LocalStack.load(folder)
    services = describe(stack) if stack is not None else {}
    result = {"folder": str(folder), "running": bool(services) and all(s["up"] for s in services.values()),
              "services": services}
    if as_json:
        return json.dumps(result)
    if stack is None:
        return f"no stack in {folder}"
    lines = [f"stack in {folder}: {'up' if result['running'] else 'down' if not any(s['up'] for s in services.values()) else 'partly up'}"]
    for name, s in services.items():
        lines.append(f"  {name:<9} {'up' if s['up'] else 'down':<5} {s['url']:<45} pid {s['pid']}")
    return "\n".join(lines)


@command(stack_app, "down")
def down_command(
    folder: Optional[Path] = FolderOption,
    purge: bool = typer.Option(False, "--purge", help="also delete the stack's data (PostgreSQL cluster, S3 objects, MLflow users, Ray logs, the folder)"),
) -> str:
    """Stop every process of the stack; its data stays for the next `up` unless --purge."""
    folder = _folder(folder)
    was_running, stack = down(folder, purge=purge)
    if stack is None:
        _say(f"no stack in {folder}: nothing to stop" + (" (folder removed)" if purge else ""))
    elif was_running:
        _say(f"stack in {folder} stopped" + (" and removed" if purge else ""))
    else:
        _say(f"stack in {folder} was already down" + (" (removed)" if purge else ""))
    return ""
