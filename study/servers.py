"""Real servers on 127.0.0.1: a private PostgreSQL cluster, an S3-compatible endpoint (moto's
server), an MLflow tracking server (PostgreSQL backend store, artifacts proxied to S3) and a Ray
head node (on the loopback address 127.0.0.2: see :class:`RayHead`).

Integration tests start these servers through this module, and ``study stack up|down|status``
(a local development stack) wraps the same classes, so this is the only copy of the logic.

Every server:

- binds 127.0.0.1 only, on a free port unless one is given;
- writes its log to a file (``log_path``), whose last lines a failed start puts in its error;
- runs in its own session (``start_new_session``), so a Ctrl-C or hang-up of the terminal that
  started it does not reach it; it is stopped explicitly, by PID, from this process or from a
  later one (``state()`` / ``from_state()`` / ``stop_pid()``).  A recorded PID is only signalled
  if the process start time recorded with it still matches, so a reused PID is never killed.

Running as root: ``initdb`` and ``postgres`` refuse to run as root, so :class:`PostgresServer`
runs them as the ``postgres`` system user (``subprocess`` ``user=``/``group=``, the same thing
``runuser -u postgres`` does). That user must be able to reach the cluster folder: when the
folder asked for is not reachable (e.g. below a pytest ``tmp_path``, which lives in the mode-700
``/tmp/pytest-of-root``, or below ``/root``), the cluster is created in a fresh
``tempfile.mkdtemp(prefix="vamp-pg-")`` folder under /tmp instead, owned by ``postgres`` with mode
0700, and a symbolic link ``<folder>/cluster`` points at it. ``PostgresServer.remove()`` deletes
such a folder.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

HOST = "127.0.0.1"
"""Every server binds this address only."""

PG_BIN = Path(os.environ.get("STUDY_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Folder of the PostgreSQL server binaries (initdb, pg_ctl, postgres)."""

POSTGRES_OS_USER = "postgres"
"""The system user that runs PostgreSQL when this process runs as root."""


# --------------------------------------------------------------------------- process helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bind to port 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field
    22), or None when there is no such process (or no /proc). Recorded with a PID so that a
    later process can tell the server from an unrelated process that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid`` (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process; with ``start_time``, also that it is the
    same process that was recorded (its start time matches)."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if _is_zombie(pid):
        return False
    if start_time is not None:
        now = process_start_time(pid)
        if now is not None and now != start_time:
            return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any live process remains in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies: look at the members themselves.
    return bool(group_members(pgid))


def stop_pid(
    pid: int,
    *,
    start_time: int | None = None,
    sig: int = signal.SIGTERM,
    grace: float = 15.0,
) -> bool:
    """Stop the server process ``pid`` and wait for it: send ``sig`` (to its whole process group
    when it leads one, as every server started here does, so that worker processes go too),
    then SIGKILL after ``grace`` seconds. Works from any process, not only the one that started
    the server. Returns False when there was nothing to stop (gone already, or ``start_time``
    shows the PID now belongs to another process), True otherwise."""
    if not pid_alive(pid, start_time):
        return False
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return False

    def send(s: int) -> None:
        try:
            if group:
                os.killpg(pid, s)
            else:
                os.kill(pid, s)
        except ProcessLookupError:
            pass

    def gone() -> bool:
        return not pid_alive(pid) and not (group and _group_alive(pid))

    send(sig)
    if _wait_for(gone, grace):
        return True
    send(signal.SIGKILL)
    if not _wait_for(gone, 10.0):
        raise RuntimeError(f"process {pid} did not exit after SIGKILL")
    return True


def _wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def tail(path: Path | str, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _http_get(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Status and body of a GET request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


# --------------------------------------------------------------------------- base class


class Service:
    """A server run as a subprocess: start it and wait until it is ready, stop it by PID.

    Subclasses give :meth:`command` and :meth:`ready` (and may override :meth:`launch` and
    :meth:`terminate` when the server is not a plain foreground process, as PostgreSQL is).
    The process runs in a new session, with stdout and stderr appended to ``log_path``.
    ``state()`` is a JSON-able dict from which ``from_state()`` rebuilds an object, in another
    process, that can report ``running`` and ``stop()`` the server.
    """

    kind: ClassVar[str] = "service"
    start_timeout: ClassVar[float] = 60.0
    stop_grace: ClassVar[float] = 15.0

    def __init__(self, log_path: Path | str, port: int | None = None) -> None:
        self.log_path = Path(log_path)
        self.port = port if port is not None else free_port()
        self.pid: int | None = None
        self.start_time: int | None = None
        self._proc: subprocess.Popen | None = None

    # -- to override
    def command(self) -> list[str]:
        """The command line of the server process."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The environment of the server process (None: this process's own)."""
        return None

    def ready(self) -> bool:
        """Whether the server answers (polled until true or timeout)."""
        return port_in_use(self.port)

    def launch(self) -> None:
        """Start the process and set ``pid``; the default runs :meth:`command` in a new session."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._proc.pid

    def terminate(self) -> None:
        """Stop the process (and its process group), waiting for it to exit."""
        if self.pid is not None:
            stop_pid(self.pid, start_time=self.start_time, grace=self.stop_grace)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - stop_pid waited already
                pass

    # -- the API
    @property
    def running(self) -> bool:
        """Whether the server process is alive (the recorded process, not a PID reuse)."""
        return pid_alive(self.pid, self.start_time)

    def start(self, timeout: float | None = None):
        """Start the server and wait until :meth:`ready`; on failure stop what was started and
        raise RuntimeError with the last lines of the log. Returns self."""
        if self.running:
            return self
        timeout = self.start_timeout if timeout is None else timeout
        if port_in_use(self.port):
            raise RuntimeError(f"{self.kind} server: port {HOST}:{self.port} is already in use")
        try:
            self.launch()
        except Exception as error:
            self._fail(f"could not start: {error}")
        if self.pid is not None:
            self.start_time = process_start_time(self.pid)

        def up() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise _Exited(self._proc.returncode)
            return self.ready()

        try:
            ok = _wait_for(up, timeout, interval=0.1)
        except _Exited as exited:
            self._fail(f"exited with status {exited.code} before it was ready")
        if not ok:
            self._fail(f"not ready after {timeout:.0f} s")
        return self

    def stop(self) -> None:
        """Stop the server and wait until its processes are gone (no-op when not running)."""
        self.terminate()

    def state(self) -> dict[str, Any]:
        """What a later process needs to report on or stop this server (JSON-able)."""
        return {
            "kind": self.kind,
            "pid": self.pid,
            "start_time": self.start_time,
            "port": self.port,
            "log_path": str(self.log_path),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]):
        """An object for a server started elsewhere, from its :meth:`state`."""
        obj = cls.__new__(cls)
        Service.__init__(obj, state["log_path"], state["port"])
        obj.pid = state.get("pid")
        obj.start_time = state.get("start_time")
        return obj

    def _fail(self, why: str) -> None:
        try:
            self.terminate()
        except Exception:  # noqa: BLE001 - the start failure is what matters
            pass
        raise RuntimeError(
            f"{self.kind} server on {HOST}:{self.port} {why}; log {self.log_path}:\n"
            f"{tail(self.log_path)}"
        )

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self.port}, pid={self.pid}, running={self.running})"


class _Exited(Exception):
    def __init__(self, code: int | None) -> None:
        self.code = code


# --------------------------------------------------------------------------- PostgreSQL


def _as_postgres_user() -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a command as the ``postgres`` system user when
    this process is root (initdb and postgres refuse root), nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(POSTGRES_OS_USER)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": entry.pw_dir,
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "LC_ALL": "C.UTF-8",
    }
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": env}


def _reachable_by_postgres(folder: Path) -> bool:
    """Whether the ``postgres`` user can create a folder in ``folder`` (always true when not
    root), checked by running ``test`` as that user. Unix-socket paths are limited to about
    107 bytes, so a long path counts as unreachable too."""
    if len(str(folder)) > 80:
        return False
    if os.geteuid() != 0:
        return True
    result = subprocess.run(
        ["test", "-d", str(folder), "-a", "-x", str(folder)],
        cwd="/",
        **_as_postgres_user(),
    )
    return result.returncode == 0


class PostgresServer(Service):
    """A private PostgreSQL 15 cluster on 127.0.0.1 with one password-protected role and one
    database, created on first start (``initdb``; TCP connections need the password,
    scram-sha-256; the Unix socket lives in the cluster folder, which only the server user can
    enter). Started and stopped with ``pg_ctl``; the cluster is kept until :meth:`remove`.

    ``folder`` holds ``postgres.log`` and the cluster (``data/``) when the ``postgres`` user
    can reach it; otherwise see the module docstring (a /tmp folder, linked as
    ``<folder>/cluster``).
    """

    kind = "postgres"
    start_timeout = 60.0

    def __init__(
        self,
        folder: Path | str,
        port: int | None = None,
        user: str = "vamp",
        password: str | None = None,
        database: str = "mlflow",
    ) -> None:
        self.folder = Path(folder).resolve()
        self.user = user
        self.password = password or secrets.token_urlsafe(18)
        self.database = database
        self.cluster_dir = self._choose_cluster_dir()
        super().__init__(self.cluster_dir / "postgres.log", port)

    # -- folders
    def _choose_cluster_dir(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        link = self.folder / "cluster"
        if link.is_symlink() and link.resolve().is_dir():
            return link.resolve()  # a cluster made earlier for this folder
        if _reachable_by_postgres(self.folder):
            return self.folder
        cluster = Path(tempfile.mkdtemp(prefix="vamp-pg-", dir="/tmp"))
        os.chmod(cluster, 0o700)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(POSTGRES_OS_USER)
            os.chown(cluster, entry.pw_uid, entry.pw_gid)
        link.unlink(missing_ok=True)
        link.symlink_to(cluster)
        return cluster

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder (PGDATA)."""
        return self.cluster_dir / "data"

    #: Databases created beside the main one: the Optuna storage of studies (study.ledger).
    extra_databases = ("optuna",)

    @property
    def sqlalchemy_uri(self) -> str:
        """``postgresql+psycopg://USER:PW@127.0.0.1:PORT/DB`` (MLflow's backend store URI)."""
        return self.database_uri(self.database)

    def database_uri(self, database: str) -> str:
        """The SQLAlchemy URI of one of the cluster's databases (with the role's password)."""
        from urllib.parse import quote

        return (
            f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{HOST}:{self.port}/{database}"
        )

    # -- commands
    def _run(self, *args: str) -> None:
        kwargs = _as_postgres_user()
        result = subprocess.run(
            list(args), cwd=self.cluster_dir, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _initdb(self) -> None:
        kwargs = _as_postgres_user()
        if "user" in kwargs:
            os.chown(self.cluster_dir, kwargs["user"], kwargs["group"])
        os.chmod(self.cluster_dir, 0o700)  # the socket (trust auth) is only for the server user
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data_dir),
            "-U", "postgres",             # superuser name, whatever the OS user
            "--auth-local=trust",         # the socket folder is private to the server user
            "--auth-host=scram-sha-256",  # TCP (127.0.0.1) needs a password
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions",
        )

    def _bootstrap(self) -> None:
        """Create the role (with its password) and the database, over the Unix socket."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=str(self.cluster_dir), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.user), sql.Literal(self.password)))
            for database in (self.database, *self.extra_databases):
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(self.user)))

    def launch(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        options = (
            f"-c listen_addresses={HOST} -c port={self.port} "
            f"-c unix_socket_directories='{self.cluster_dir}' "
            "-c synchronous_commit=off"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path),
            "-w", "-t", str(int(self.start_timeout)), "-o", options,
        )
        self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self._bootstrap()

    def ready(self) -> bool:
        return port_in_use(self.port)  # pg_ctl -w waited already

    def terminate(self) -> None:
        if not self.running:
            return
        try:
            self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")
        except RuntimeError:
            pass
        if self.running:  # pg_ctl failed: fast shutdown is SIGINT, then kill
            stop_pid(self.pid, start_time=self.start_time, sig=signal.SIGINT, grace=self.stop_grace)
        _wait_for(lambda: not self.running, 10.0)

    def remove(self) -> None:
        """Stop the server and delete the cluster (and its /tmp folder when one was made)."""
        self.stop()
        if self.cluster_dir != self.folder:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            (self.folder / "cluster").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "folder": str(self.folder),
            "cluster_dir": str(self.cluster_dir),
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "PostgresServer":
        obj = super().from_state(state)
        obj.folder = Path(state["folder"])
        obj.cluster_dir = Path(state["cluster_dir"])
        obj.user, obj.password, obj.database = state["user"], state["password"], state["database"]
        return obj


# --------------------------------------------------------------------------- S3 (moto)


class S3Server(Service):
    """moto's S3-compatible server (``moto_server -H 127.0.0.1 -p PORT``) with fixed test
    credentials. Objects live in the server's memory: they are gone when it stops."""

    kind = "s3"
    start_timeout = 30.0
    access_key = "vamp-test-access-key"
    secret_key = "vamp-test-secret-key"
    region = "us-east-1"

    def __init__(
        self,
        port: int | None = None,
        folder: Path | str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="vamp-s3-"))
        if access_key:
            self.access_key = access_key  # moto accepts any keys: these are what clients are told
        if secret_key:
            self.secret_key = secret_key
        super().__init__(folder / "moto.log", port)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("moto_server")
        return [str(exe) if exe.exists() else "moto_server", "-H", HOST, "-p", str(self.port)]

    def ready(self) -> bool:
        try:
            _http_get(self.endpoint_url + "/", timeout=1.0)
            return True
        except OSError:
            return False

    def env(self) -> dict[str, str]:
        """Environment for clients that talk to this S3 directly (boto3, pyarrow/s3fs via
        AWS_ENDPOINT_URL, an MLflow server via MLFLOW_S3_ENDPOINT_URL)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def write_credentials_file(self, path: Path | str) -> Path:
        """Write this server's keys as the ``default`` profile of an AWS shared-credentials file
        (mode 0600) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(f"[default]\naws_access_key_id = {self.access_key}\n"
                         f"aws_secret_access_key = {self.secret_key}\n")
        os.chmod(path, 0o600)
        return path

    def file_env(self, credentials_file: Path | str) -> dict[str, str]:
        """Like :meth:`env`, but the keys come from ``credentials_file`` (see
        :meth:`write_credentials_file`) through AWS_SHARED_CREDENTIALS_FILE, which boto3, pyarrow and
        the AWS SDKs read. Ray Tune copies AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a
        driver's environment into the runtime environment of every trial, which Ray's runtime-env
        agent writes to its log in clear; a file path is not copied and not a secret."""
        env = {k: v for k, v in self.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(Path(credentials_file).resolve())
        return env

    def client(self):
        """A boto3 S3 client for this server with its credentials."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error when it exists)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def state(self) -> dict[str, Any]:
        return {**super().state(), "access_key": self.access_key, "secret_key": self.secret_key}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "S3Server":
        obj = super().from_state(state)
        if state.get("access_key"):
            obj.access_key, obj.secret_key = state["access_key"], state["secret_key"]
        return obj


# --------------------------------------------------------------------------- MLflow


def basic_auth_available() -> bool:
    """Whether MLflow's basic-auth app can run here: it needs ``mlflow[auth]`` (Flask-WTF)."""
    import importlib.util

    return importlib.util.find_spec("flask_wtf") is not None


class MlflowServer(Service):
    """``mlflow server`` (MLflow 3.17, uvicorn) on 127.0.0.1 with a database backend store and
    artifacts proxied to ``artifacts_destination``: the default artifact root is
    ``mlflow-artifacts:/``, so clients need no storage credentials. ``env`` (e.g.
    ``S3Server.env()``) goes to the server process only. Job execution is off (it would start
    about 2 GB of workers).

    Several workers (``workers > 1``) are uvicorn processes in the server's process group;
    ``stop()`` signals the whole group.

    ``auth=(username, password)`` turns on MLflow's basic authentication (``--app-name
    basic-auth``): that user is the admin, its user store is ``basic_auth.db`` (SQLite) in
    ``folder``, requests without credentials get 401, and clients set
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (:meth:`client_env`). The auth app
    needs the ``mlflow[auth]`` extra (Flask-WTF, :func:`basic_auth_available`); without it the
    server exits at start and ``start()`` raises with MLflow's ImportError in the message.
    """

    kind = "mlflow"
    start_timeout = 120.0

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        auth: tuple[str, str] | None = None,
        folder: Path | str | None = None,
    ) -> None:
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="vamp-mlflow-"))
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.server_env = dict(env or {})
        self.workers = workers
        self.auth = tuple(auth) if auth else None
        super().__init__(self.folder / "mlflow.log", port)

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(exe) if exe.exists() else "mlflow", "server",
            "--host", HOST, "--port", str(self.port),
            "--serve-artifacts", "--artifacts-destination", self.artifacts_destination,
            "--default-artifact-root", "mlflow-artifacts:/",
            "--workers", str(self.workers),
            "--allowed-hosts", f"{HOST}:{self.port},localhost:{self.port},{HOST},localhost",
        ]
        if self.auth:
            cmd += ["--app-name", "basic-auth"]
        return cmd

    def launch(self) -> None:
        if self.auth and "PYTHONPATH" not in self.server_env and not basic_auth_available():
            raise RuntimeError(
                "basic authentication needs the mlflow[auth] extra (Flask-WTF), which is not "
                "installed: pip install 'mlflow[auth]==<the mlflow version>'"
            )
        super().launch()

    def _write_auth_config(self) -> Path:
        path = self.folder / "basic_auth.ini"
        config = configparser.ConfigParser()
        config["mlflow"] = {
            "default_permission": "READ",
            "database_uri": f"sqlite:///{(self.folder / 'basic_auth.db').resolve()}",
            "admin_username": self.auth[0],
            "admin_password": self.auth[1],
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        }
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            config.write(handle)
        return path

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env.update(self.server_env)
        # The backend store URI holds the database password: in the environment, not on the
        # command line, which every user of the machine can read (ps, /proc/PID/cmdline).
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.auth:
            self.folder.mkdir(parents=True, exist_ok=True)
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self._write_auth_config())
            secret = self.folder / "flask_secret"
            if not secret.exists():
                secret.write_text(secrets.token_hex(32))
                secret.chmod(0o600)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret.read_text()
        return env

    def ready(self) -> bool:
        try:
            status, body = _http_get(self.tracking_uri + "/health", timeout=2.0)
        except OSError:
            return False
        return status == 200 and body.strip() == "OK"

    def client_env(self) -> dict[str, str]:
        """Environment for MLflow clients: the tracking URI and, with auth, the credentials."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if self.auth:
            env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = self.auth
        return env

    def state(self) -> dict[str, Any]:
        return {**super().state(), "folder": str(self.folder), "auth": list(self.auth) if self.auth else None}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "MlflowServer":
        obj = super().from_state(state)
        obj.folder = Path(state["folder"])
        obj.auth = tuple(state["auth"]) if state.get("auth") else None
        return obj


# --------------------------------------------------------------------------- Ray head


def _environ_has(pid: int, entry: bytes) -> bool:
    """Whether process ``pid`` was started with the environment entry ``entry`` (``NAME=value``)."""
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class RayHead(Service):
    """A Ray head node (``ray start --head --block``): GCS on ``port``, no dashboard, no usage
    stats, ``num_cpus`` CPUs (default: Ray's count), logs and sockets in its own temp folder.

    Drivers join it with ``ray.init(address=head.address)`` and the environment of
    :meth:`client_env`: token authentication is on (``RAY_AUTH_MODE=token``) with a token of this
    head only (``<folder>/auth_token``, mode 0600, named by ``RAY_AUTH_TOKEN_PATH``), not the
    user's ``~/.ray/auth_token``.

    Addresses: Ray turns ``--node-ip-address=127.0.0.1`` into the machine's outward address, so
    the node is announced on ``127.0.0.2`` (another loopback address, which Ray leaves alone);
    ``address`` is ``127.0.0.2:PORT``. Ray's GCS and raylet bind every interface whatever the node
    address is (no Ray option changes that). The other ports Ray would take by fixed default
    (dashboard 8265, agent 52365, ...) are free ports, so heads of several stacks can run at once.

    ``env`` goes to the head's processes (and so to every Ray worker), e.g. the S3 endpoint and
    keys that trials need to write checkpoints to S3 storage. MLflow credentials are not given.

    Stopping. The workers of a raylet start their own process groups and the agents can outlive
    the raylet, so the process group is not enough. Every process of this head carries a marker in
    its environment (``VAMP_RAY_HEAD=<random id>``, inherited from ``ray start``), found in
    ``/proc/*/environ`` (:meth:`processes`) however it was re-parented; ``stop()`` sends SIGTERM to
    ``ray start`` (which stops its children), then SIGTERM and SIGKILL to whatever carries the
    marker. ``ray stop`` is not used: it stops every Ray on the machine.
    """

    kind = "ray"
    start_timeout = 120.0
    stop_grace = 15.0
    node_ip = "127.0.0.2"
    marker_name = "VAMP_RAY_HEAD"
    _temp_dir_max = 40  # the session's Unix socket paths add about 65 bytes (limit 107)

    def __init__(
        self,
        port: int | None = None,
        num_cpus: int | None = None,
        folder: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = (Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="vamp-ray-"))).resolve()
        self.num_cpus = num_cpus
        self.server_env = dict(env or {})
        self.marker = secrets.token_hex(12)
        self.temp_dir = self._choose_temp_dir()
        self.ports: dict[str, int] = {}
        super().__init__(self.folder / "ray.log", port)

    # -- folders and token
    def _choose_temp_dir(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        link = self.folder / "tmp"
        if link.is_symlink() and link.resolve().is_dir() and len(str(link.resolve())) <= self._temp_dir_max:
            return link.resolve()
        if len(str(link)) <= self._temp_dir_max and not link.is_symlink():
            return link
        temp = Path(tempfile.mkdtemp(prefix="vamp-ray-", dir="/tmp"))
        link.unlink(missing_ok=True)
        link.symlink_to(temp)
        return temp

    @property
    def token_path(self) -> Path:
        return self.folder / "auth_token"

    def _write_token(self) -> None:
        if not self.token_path.exists():
            with open(os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                handle.write(secrets.token_hex(32))

    @property
    def address(self) -> str:
        """The GCS address a driver joins: ``ray.init(address=...)`` / RAY_ADDRESS."""
        return f"{self.node_ip}:{self.port}"

    # -- the process
    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("ray")
        if not self.ports:
            self.ports = {name: free_port() for name in (
                "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                "runtime-env-agent-port", "metrics-export-port")}
        cmd = [
            str(exe) if exe.exists() else "ray", "start", "--head", "--block",
            f"--node-ip-address={self.node_ip}", "--port", str(self.port),
            "--disable-usage-stats", "--include-dashboard=false",
            "--temp-dir", str(self.temp_dir),
        ]
        for name, port in self.ports.items():
            cmd += [f"--{name}", str(port)]
        if self.num_cpus is not None:
            cmd += ["--num-cpus", str(self.num_cpus)]
        return cmd

    def environment(self) -> dict[str, str]:
        drop = ("AWS_", "MLFLOW_", "RAY_ADDRESS", "RAY_AUTH_", "STUDY_STORAGE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(self.server_env)
        env.update(self.client_env())
        env.pop("RAY_ADDRESS", None)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env[self.marker_name] = self.marker
        return env

    def client_env(self) -> dict[str, str]:
        """Environment for drivers that join this head."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def launch(self) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._write_token()
        super().launch()

    def ready(self) -> bool:
        return "Ray runtime started" in tail(self.log_path, 200) and port_in_use(self.port)

    def processes(self) -> list[int]:
        """PIDs of the live processes of this head (GCS, raylet, agents, workers), found by the
        marker in their environment."""
        entry = f"{self.marker_name}={self.marker}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _environ_has(int(proc.name), entry) and not _is_zombie(int(proc.name)):
                pids.append(int(proc.name))
        return pids

    def terminate(self) -> None:
        if self.pid is not None and pid_alive(self.pid, self.start_time):
            try:
                os.kill(self.pid, signal.SIGTERM)  # `ray start --block` stops its children
            except ProcessLookupError:
                pass
        gone = lambda: not self.processes() and not pid_alive(self.pid, self.start_time)  # noqa: E731
        if not _wait_for(gone, self.stop_grace):
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
                for pid in self.processes():
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                if _wait_for(gone, wait):
                    break
            else:
                raise RuntimeError(f"ray head {self.address}: processes {self.processes()} did not exit")
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    @property
    def running(self) -> bool:
        return pid_alive(self.pid, self.start_time)

    def remove(self) -> None:
        """Stop the head and delete its folder and temp folder (logs, sessions, token)."""
        self.stop()
        link = self.folder / "tmp"
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "address": self.address, "folder": str(self.folder),
                "temp_dir": str(self.temp_dir), "marker": self.marker, "num_cpus": self.num_cpus,
                "ports": self.ports}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "RayHead":
        obj = super().from_state(state)
        obj.folder = Path(state["folder"])
        obj.temp_dir = Path(state["temp_dir"])
        obj.marker = state["marker"]
        obj.num_cpus = state.get("num_cpus")
        obj.ports = dict(state.get("ports") or {})
        obj.server_env = {}
        return obj


# --------------------------------------------------------------------------- the local stack


class LocalStack:
    """PostgreSQL + S3 (moto, bucket ``vamp-study``) + MLflow (PostgreSQL backend store,
    artifacts proxied to ``s3://vamp-study/mlflow``) and, with ``ray=True``, a Ray head
    (:class:`RayHead`, whose workers get the S3 endpoint and keys for Ray storage), on loopback
    addresses, logs under ``folder``.

    ``auth=(user, password)`` turns on MLflow's basic authentication. ``s3_keys=(access key,
    secret key)`` and ``postgres_password`` replace the generated/fixed credentials.

    ``env()`` is what a user exports to use it (tracking URI and credentials, S3 endpoint and
    keys, ``STUDY_STORAGE`` and, with the Ray head, RAY_ADDRESS and its token settings);
    ``storage_uri`` (``s3://vamp-study/ray``) is where Ray storage goes.
    ``save_state`` / ``load_state`` let a later process report on it or stop it.
    The S3 objects live in moto's memory and are lost on stop; the PostgreSQL cluster stays
    in ``folder`` (or its /tmp cluster folder) until :meth:`remove`.
    """

    bucket = "vamp-study"
    state_file = "stack.json"

    def __init__(
        self,
        folder: Path | str,
        auth: tuple[str, str] | None = None,
        *,
        ray: bool = False,
        num_cpus: int | None = None,
        s3_keys: tuple[str, str] | None = None,
        postgres_password: str | None = None,
        credentials_file: bool = False,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.credentials_file = credentials_file
        self.auth = tuple(auth) if auth else None
        self.with_ray = ray
        self.num_cpus = num_cpus
        self.s3_keys = tuple(s3_keys) if s3_keys else None
        self.postgres_password = postgres_password
        self.postgres: PostgresServer | None = None
        self.s3: S3Server | None = None
        self.mlflow: MlflowServer | None = None
        self.ray: RayHead | None = None

    @property
    def storage_uri(self) -> str:
        return f"s3://{self.bucket}/ray"

    @property
    def services(self) -> list[Service]:
        return [s for s in (self.postgres, self.s3, self.mlflow, self.ray) if s is not None]

    def start(self) -> "LocalStack":
        """Start PostgreSQL and S3, create the bucket, then start MLflow (and the Ray head). On
        failure, stop what was started and re-raise."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres = PostgresServer(self.folder / "postgres", password=self.postgres_password)
            self.postgres.start()
            access, secret = self.s3_keys or (None, None)
            self.s3 = S3Server(folder=self.folder / "s3", access_key=access, secret_key=secret)
            self.s3.start()
            self.s3.create_bucket(self.bucket)
            self.mlflow = MlflowServer(
                self.postgres.sqlalchemy_uri,
                f"s3://{self.bucket}/mlflow",
                env=self.s3.env(),
                auth=self.auth,
                folder=self.folder / "mlflow",
            )
            self.mlflow.start()
            if self.credentials_file:
                self.s3.write_credentials_file(self.aws_credentials_path)
            if self.with_ray:
                s3_env = {k: v for k, v in self.s3_env().items() if k.startswith("AWS_")}
                self.ray = RayHead(num_cpus=self.num_cpus, folder=self.folder / "ray", env=s3_env)
                self.ray.start()
        except BaseException:
            try:
                self.stop()
            except Exception:  # noqa: BLE001 - the start failure is what matters
                pass
            raise
        return self

    def stop(self) -> None:
        """Stop the Ray head, MLflow, S3 and PostgreSQL (in that order); nothing is left running."""
        errors = []
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as error:  # noqa: BLE001 - stop the others anyway
                errors.append(error)
        if errors:
            raise RuntimeError(f"stopping the stack: {errors}")

    def remove(self) -> None:
        """Stop the stack and delete the PostgreSQL cluster (and the Ray head's folders)."""
        self.stop()
        if self.ray is not None:
            self.ray.remove()
        if self.postgres is not None:
            self.postgres.remove()

    def status(self) -> dict[str, bool]:
        """Whether each server is running, by name."""
        return {s.kind: s.running for s in self.services}

    @property
    def running(self) -> bool:
        return bool(self.services) and all(self.status().values())

    @property
    def aws_credentials_path(self) -> Path:
        return self.folder / "s3" / "aws_credentials"

    def s3_env(self) -> dict[str, str]:
        """The S3 part of :meth:`env`: the keys themselves, or with ``credentials_file`` the path of
        a shared-credentials file that holds them (see :meth:`S3Server.file_env`)."""
        if self.s3 is None:
            raise RuntimeError("the stack is not started")
        return self.s3.file_env(self.aws_credentials_path) if self.credentials_file else self.s3.env()

    def env(self) -> dict[str, str]:
        """The environment a user exports: MLFLOW_TRACKING_URI (and credentials with auth),
        AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or, with ``credentials_file``,
        AWS_SHARED_CREDENTIALS_FILE), AWS_DEFAULT_REGION, AWS_ENDPOINT_URL (Ray storage in S3),
        MLFLOW_S3_ENDPOINT_URL, STUDY_STORAGE and, with the Ray head, RAY_ADDRESS, RAY_AUTH_MODE
        and RAY_AUTH_TOKEN_PATH; STUDY_OPTUNA_STORAGE (the studies' Optuna storage in PostgreSQL)."""
        if self.s3 is None or self.mlflow is None:
            raise RuntimeError("the stack is not started")
        env = {**self.s3_env(), **self.mlflow.client_env(), "STUDY_STORAGE": self.storage_uri,
               "STUDY_OPTUNA_STORAGE": self.postgres.database_uri("optuna")}
        if self.ray is not None:
            env.update(self.ray.client_env())
        return env

    def state(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "bucket": self.bucket,
            "storage_uri": self.storage_uri,
            "auth": list(self.auth) if self.auth else None,
            "credentials_file": self.credentials_file,
            "postgres": self.postgres.state() if self.postgres else None,
            "s3": self.s3.state() if self.s3 else None,
            "mlflow": self.mlflow.state() if self.mlflow else None,
            "ray": self.ray.state() if self.ray else None,
        }

    def save_state(self, path: Path | str | None = None) -> Path:
        """Write :meth:`state` as JSON (mode 0600: it holds the passwords and keys) to ``path``
        (default ``<folder>/stack.json``); returns the path."""
        path = Path(path) if path is not None else self.folder / self.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(self.state(), handle, indent=2)
        os.chmod(path, 0o600)
        return path

    @classmethod
    def load_state(cls, path: Path | str) -> "LocalStack":
        """A stack object for servers started by another process, from :meth:`save_state`."""
        state = json.loads(Path(path).read_text())
        stack = cls(state["folder"], auth=tuple(state["auth"]) if state.get("auth") else None,
                    ray=bool(state.get("ray")), credentials_file=bool(state.get("credentials_file")))
        if state.get("postgres"):
            stack.postgres = PostgresServer.from_state(state["postgres"])
        if state.get("s3"):
            stack.s3 = S3Server.from_state(state["s3"])
        if state.get("mlflow"):
            stack.mlflow = MlflowServer.from_state(state["mlflow"])
        if state.get("ray"):
            stack.ray = RayHead.from_state(state["ray"])
        return stack

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "HOST", "free_port", "port_in_use", "process_start_time", "pid_alive", "stop_pid", "tail",
    "group_members", "basic_auth_available",
    "Service", "PostgresServer", "S3Server", "MlflowServer", "RayHead", "LocalStack",
]
