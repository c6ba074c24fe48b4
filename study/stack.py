"""`study stack up|down|status`: the local development stack.

A private PostgreSQL cluster, moto's S3 server, an MLflow tracking server (PostgreSQL backend
store, artifacts proxied to S3, basic authentication on) and a Ray head, on loopback addresses
with free ports. The servers are :class:`study.servers.LocalStack`, the same code that the
integration tests start; this module only adds the command line, the state file and the
credentials.

State: ``FOLDER/stack.json`` (mode 0600; it holds the passwords), default ``$STUDY_HOME/stack``.
`up` prints the environment to export (``eval "$(study stack up)"``), `down` stops every
process by PID (from the state file; nothing is left behind), `status` reports each service.

Credentials: the MLflow admin user is ``vamp`` with a generated password; S3 keys and the
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

from trainables.errors import InputError

stack_app = typer.Typer(no_args_is_help=True,
                        help="The local development stack: PostgreSQL, S3, MLflow (with auth) and a Ray head.")

MLFLOW_USER = "vamp"
STATE_FILE = "stack.json"


def default_folder() -> Path:
    from study import settings

    return settings.home() / "stack"


def _folder(folder: Path | None) -> Path:
    return (folder or default_folder()).expanduser().resolve()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(folder: Path):
    """The stack recorded in ``folder`` (None when there is no state file)."""
    from study.servers import LocalStack

    path = folder / STATE_FILE
    return LocalStack.load_state(path) if path.is_file() else None


def describe(stack) -> dict:
    """Each service: up or down, where, its PID and log."""
    services = {}
    for service in stack.services:
        row = {"up": service.running, "pid": service.pid, "port": service.port, "log": str(service.log_path)}
        if service.kind == "mlflow":
            row["url"] = service.tracking_uri
        elif service.kind == "s3":
            row["url"] = service.endpoint_url
        elif service.kind == "postgres":
            row["url"] = f"postgresql://{service.user}@127.0.0.1:{service.port}/{service.database}"
        elif service.kind == "ray":
            row["url"] = service.address
            row["processes"] = len(service.processes()) if service.running else 0
        services[service.kind] = row
    return services


def exports(env: dict) -> str:
    """``export NAME=value`` lines, shell-quoted."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))


def up(folder: Path, *, num_cpus: int | None = None, mlflow_password: str | None = None,
       s3_keys: tuple[str, str] | None = None, postgres_password: str | None = None, auth: bool = True):
    """Start the stack in ``folder`` and save its state; refuses when one runs there already."""
    from study.servers import LocalStack

    previous = load(folder)
    if previous is not None and any(previous.status().values()):
        raise InputError(f"--folder: a stack is already running from {folder} "
                         f"(`study stack status --folder {folder}`; stop it with `study stack down`)")
    auth_pair = None
    if auth:
        old = previous.auth if previous is not None and previous.auth else None
        password = mlflow_password or (old[1] if old else None) or secrets.token_urlsafe(18)
        if old and old[1] != password:
            # MLflow keeps the admin's first password in its user store: start a fresh one.
            (folder / "mlflow" / "basic_auth.db").unlink(missing_ok=True)
        auth_pair = (MLFLOW_USER, password)
    if s3_keys is None:
        s3_keys = (f"vamp-{secrets.token_hex(6)}", secrets.token_urlsafe(24))
    stack = LocalStack(folder, auth=auth_pair, ray=True, num_cpus=num_cpus, s3_keys=s3_keys,
                       postgres_password=postgres_password, credentials_file=True)
    stack.start()
    try:
        stack.save_state()
    except BaseException:
        stack.stop()
        raise
    return stack


def down(folder: Path, *, purge: bool = False) -> tuple[bool, object]:
    """Stop the stack recorded in ``folder``; with ``purge`` delete its data and folder too.
    Returns (whether anything was running, the stack or None)."""
    stack = load(folder)
    if stack is None:
        if purge and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        return False, None
    was_running = any(stack.status().values())
    if purge:
        stack.remove()
        shutil.rmtree(folder, ignore_errors=True)
    else:
        stack.stop()
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
        return json.dumps({"folder": str(folder), "state_file": str(folder / STATE_FILE), "env": env,
                           "services": describe(stack)})
    return exports(env)


@command(stack_app, "status")
def status_command(
    folder: Optional[Path] = FolderOption,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> str:
    """Each service of the stack: up or down, its URL or address, PID and log."""
    folder = _folder(folder)
    stack = load(folder)
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
    purge: bool = typer.Option(False, "--purge", help="also delete the stack's data (PostgreSQL cluster, Ray logs, the folder)"),
) -> str:
    """Stop every process of the stack by PID (the S3 objects are in memory: they go too)."""
    folder = _folder(folder)
    was_running, stack = down(folder, purge=purge)
    if stack is None:
        _say(f"no stack in {folder}: nothing to stop" + (" (folder removed)" if purge else ""))
    elif was_running:
        _say(f"stack in {folder} stopped" + (" and removed" if purge else ""))
    else:
        _say(f"stack in {folder} was already down" + (" (removed)" if purge else ""))
    return ""
