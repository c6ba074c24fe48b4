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
import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from study.command import command, stdout
from study.stack.local import LocalStack, StateUnreadable
from study.stack.process import PortTaken
from trainables.errors import InputError

stack_app = typer.Typer(no_args_is_help=True,
                        help="The local development stack: PostgreSQL, S3, MLflow (with auth) and a Ray head.")

MLFLOW_USER = "vamp"
FolderOption = typer.Option(None, "--folder", help="the stack's folder (default: $STUDY_HOME/stack)")


def _folder(folder: Path | None) -> Path:
    from study import settings

    return (folder or settings.home() / "stack").expanduser().resolve()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(stack: LocalStack) -> dict:
    """Each server: up or down, where, its PID and log."""
    return {s.kind: {"up": s.running, "url": s.url, "pid": s.pid, "port": s.port, "log": str(s.log_path)}
            for s in stack.services}


def up(folder: Path, *, num_cpus: int | None = None, auth: bool = True) -> LocalStack:
    """Start the stack in ``folder`` (again, with its ports, credentials and data, when it ran
    there before; the STUDY_STACK_* variables replace its credentials) and save its state;
    refuses when one runs there already."""
    stack = _load(folder)
    if stack is not None and any(stack.status().values()):
        raise InputError(f"--folder: a stack is already running from {folder} "
                         f"(`study stack status --folder {folder}`; stop it with `study stack down`)")
    stack = stack or LocalStack.create(folder, ray=True, credentials_file=True)
    if num_cpus is not None:
        stack.ray.num_cpus = num_cpus
    given = {name: os.environ.get(f"STUDY_STACK_{name}") or None
             for name in ("MLFLOW_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "POSTGRES_PASSWORD")}
    password = given["MLFLOW_PASSWORD"] or (stack.mlflow.auth or (None, secrets.token_urlsafe(18)))[1]
    new_auth = (MLFLOW_USER, password) if auth else None
    if new_auth != stack.mlflow.auth:
        # MLflow keeps the admin's first password in its user store: start a fresh one.
        (stack.mlflow.folder / "basic_auth.db").unlink(missing_ok=True)
    stack.mlflow.auth = new_auth
    if given["S3_ACCESS_KEY"] and given["S3_SECRET_KEY"]:
        stack.s3.access_key, stack.s3.secret_key = given["S3_ACCESS_KEY"], given["S3_SECRET_KEY"]
    stack.postgres.password = given["POSTGRES_PASSWORD"] or stack.postgres.password
    try:
        return stack.start(save=True)
    except PortTaken as taken:
        raise InputError(f"--folder: {taken}; the stack in {folder} keeps its ports so that the addresses "
                         "its studies recorded stay valid: stop that program, or start a new stack "
                         "(another --folder, or `study stack down --purge`, which deletes the data)") from None


def _load(folder: Path) -> LocalStack | None:
    try:
        return LocalStack.load(folder)
    except StateUnreadable as error:
        raise InputError(f"--folder: {error}") from None


@command(stack_app, "up")
def up_command(
    folder: Optional[Path] = FolderOption,
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the Ray head (default: all)"),
    auth: bool = typer.Option(True, "--auth/--no-auth", help="MLflow basic authentication (user vamp)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> str:
    """Start PostgreSQL, S3, MLflow and a Ray head (again, with their data, after a `down`); print
    the environment to export."""
    folder = _folder(folder)
    stack = up(folder, num_cpus=num_cpus, auth=auth)
    env = stack.env()
    _say(f"stack up in {folder}: MLflow {env['MLFLOW_TRACKING_URI']}, S3 {env['AWS_ENDPOINT_URL']}, "
         f"Ray {env['RAY_ADDRESS']}; stop it with `study stack down --folder {folder}`")
    if as_json:
        return json.dumps({"folder": str(folder), "state_file": str(folder / LocalStack.state_file), "env": env,
                           "services": describe(stack)})
    return _exports(env)


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))


@command(stack_app, "env")
def env_command(folder: Optional[Path] = FolderOption) -> str:
    """Print the environment of the running stack again (for another shell: eval "$(study stack env)")."""
    folder = _folder(folder)
    stack = _load(folder)
    if stack is None or not all(stack.status().values()):
        raise InputError(f"--folder: no stack runs from {folder}; start it with `study stack up --folder {folder}`")
    return _exports(stack.env())


@command(stack_app, "status")
def status_command(
    folder: Optional[Path] = FolderOption,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> str:
    """Each server of the stack: up or down, its URL or address, PID and log."""
    folder = _folder(folder)
    stack = _load(folder)
    services = describe(stack) if stack is not None else {}
    result = {"folder": str(folder), "running": bool(services) and all(s["up"] for s in services.values()),
              "services": services}
    if as_json:
        return json.dumps(result)
    if stack is None:
        return f"no stack in {folder}"
    ups = [s["up"] for s in services.values()]
    table = Table(title=f"stack in {folder}: {'up' if all(ups) else 'partly up' if any(ups) else 'down'}",
                  title_justify="left")
    for column in ("server", "state", "address", "pid", "log"):
        table.add_column(column)
    for name, s in services.items():
        table.add_row(name, "up" if s["up"] else "down", s["url"], str(s["pid"]), s["log"])
    Console(file=stdout, width=200).print(table)
    return ""


@command(stack_app, "down")
def down_command(
    folder: Optional[Path] = FolderOption,
    purge: bool = typer.Option(False, "--purge", help="also delete the stack's data: runs, models, objects, "
                                                      "users, logs (the whole folder)"),
) -> str:
    """Stop every process of the stack; its data stays for the next `up` unless --purge."""
    folder = _folder(folder)
    stack = _load(folder)
    was_running = stack is not None and any(stack.status().values())
    if stack is not None:
        stack.remove() if purge else stack.stop()
    if purge:
        shutil.rmtree(folder, ignore_errors=True)
    state = "no stack" if stack is None else "stopped" if was_running else "already down"
    _say(f"{folder}: {state}" + (", removed" if purge else ""))
    return ""
