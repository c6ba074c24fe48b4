"""A server as a process on 127.0.0.1: start it and wait until it answers, find every process it
started, stop them all. The other modules of this package are one server each.

Every server binds 127.0.0.1 only, logs to a file in its folder (a failed start quotes its last
lines), and runs in its own session, so that a Ctrl-C in the terminal that started it does not
reach it. Each process it starts carries a marker in its environment (``VAMP_SERVER=<random
id>``), inherited by its children however they are re-parented later (PostgreSQL's backends
overwrite theirs with their title: they are found as the postmaster's children): stopping
signals the server, then whatever still carries the marker. A recorded PID is only signalled
while its start time matches, so a reused PID is never killed.

A server is a pydantic model: its fields are its whole state, so a later process rebuilds it from
JSON (``model_validate_json``) to report on it or stop it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, ClassVar

import psutil
from pydantic import BaseModel, Field, PrivateAttr

HOST = "127.0.0.1"
MARKER = "VAMP_SERVER"


_given: set[int] = set()  # ports free_port has handed out in this process (and their gRPC twins)


def free_port(grpc: bool = False) -> int:
    """A TCP port on 127.0.0.1 free right now and not handed out before by this process; with
    ``grpc``, one whose port + 10000 is free too (SeaweedFS serves gRPC there)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if grpc:
            port = 20000 + port % 30000
        twins = {port, port + 10000} if grpc else {port}
        if not twins & _given and not any(map(port_in_use, twins)):
            _given.update(twins | {p - 10000 for p in twins})
            return port


def executable(name: str) -> str:
    """The program ``name`` installed beside this Python (the project's environment), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)
    return True


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' when there is none)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600): passwords, keys, tokens.
    The file is replaced whole (a crash leaves the old one or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(text)
    os.replace(part, path)
    return path


def private_folder(path: Path) -> Path:
    """``path`` as a folder that only its owner can enter (objects, user stores, logs)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _live(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class PortTaken(RuntimeError):
    """A port the server is to listen on is in use."""


class Server(BaseModel):
    """One server: subclasses give :meth:`command` and may change :meth:`environment`,
    :meth:`ready`, :meth:`launch` and :meth:`shutdown`."""

    kind: ClassVar[str] = "server"
    start_timeout: ClassVar[float] = 60.0
    stop_grace: ClassVar[float] = 15.0

    folder: Path
    port: int = Field(default_factory=free_port)
    pid: int | None = None
    created: float | None = None  # the start time of ``pid`` (psutil), to tell a reused PID
    marker: str = Field(default_factory=lambda: secrets.token_hex(12))
    _child: subprocess.Popen | None = PrivateAttr(None)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.kind}.log"

    @property
    def url(self) -> str:
        """Where clients reach it."""
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The server's environment: this process's, less the stack's client settings and
        credentials (Ray's workers keep STUDY_CACHE_DIR and STUDY_DATA_MIRROR, which trials read)."""
        drop = ("AWS_", "MLFLOW_", "RAY_ADDRESS", "RAY_AUTH_", "STUDY_STORAGE", "STUDY_OPTUNA_STORAGE", "STUDY_STACK_")
        return {k: v for k, v in os.environ.items() if not k.startswith(drop)}

    def ready(self) -> bool:
        return port_in_use(self.port)

    def ports_used(self) -> list[int]:
        """Every port the server listens on."""
        return [self.port]

    def ports_taken(self) -> list[int]:
        """Those of its ports that something else listens on now."""
        return [port for port in self.ports_used() if port_in_use(port)]

    def launch(self) -> None:
        """Start the server's process in a new session and record its PID."""
        private_folder(self.folder)
        with open(self.log_path, "ab") as log:
            self._child = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**self.environment(), MARKER: self.marker}, cwd=self.folder, start_new_session=True)
        self.pid = self._child.pid

    def shutdown(self, main: psutil.Process) -> None:
        """Ask the server to stop (it is then given ``stop_grace`` seconds)."""
        main.terminate()

    def process(self) -> psutil.Process | None:
        """The server's main process while it runs (not a later process with its PID)."""
        try:
            main = psutil.Process(self.pid) if self.pid else None
        except psutil.Error:
            return None
        # psutil's start time moves with the wall clock (boot time + ticks): a second's slack
        if main is None or not _live(main) or abs(main.create_time() - (self.created or 0)) > 1.0:
            return None
        return main

    @property
    def running(self) -> bool:
        return self.process() is not None

    def processes(self) -> list[psutil.Process]:
        """Every live process this server started: its main process's descendants and whatever
        carries its marker (PostgreSQL's backends overwrite their environment with their title)."""
        main = self.process()
        try:
            found = {p.pid: p for p in ([main, *main.children(recursive=True)] if main else [])}
        except psutil.Error:  # it has just exited
            found = {}
        for proc in psutil.process_iter(["environ"]):
            if (proc.info["environ"] or {}).get(MARKER) == self.marker:
                found.setdefault(proc.pid, proc)
        return [p for p in found.values() if _live(p)]

    def start(self, timeout: float | None = None):
        """Start the server and wait until it is :meth:`ready`; a failed start stops what it
        started and raises RuntimeError with the end of the log. Returns self."""
        if self.running:
            return self
        taken = self.ports_taken()
        if taken:
            raise PortTaken(f"{self.kind} server: port {', '.join(map(str, taken))} of {HOST} is in use by "
                            "another program")
        self.pid = self.created = None
        try:
            self.launch()
            self.created = self.created or psutil.Process(self.pid).create_time()
        except Exception as error:  # noqa: BLE001 - reported with the log below
            self._fail(f"could not start: {error}")

        def up() -> bool:
            if self._child is not None and self._child.poll() is not None:
                self._fail(f"exited with status {self._child.returncode} before it was ready")
            return self.ready()

        if not wait_for(up, timeout or self.start_timeout, interval=0.1):
            self._fail(f"not ready after {timeout or self.start_timeout:.0f} s")
        return self

    def stop(self) -> None:
        """Stop the server and every process it started (SIGTERM, then SIGKILL to what is left);
        wait until they are gone."""
        main = self.process()
        if main is not None:
            self.shutdown(main)
        for sig, wait in ((None, self.stop_grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for proc in self.processes() if sig else ():
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
            if wait_for(lambda: not self.processes(), wait, interval=0.2):
                break
        else:
            raise RuntimeError(f"{self.kind} server: processes {[p.pid for p in self.processes()]} did not exit")
        if self._child is not None:
            self._child.wait(timeout=5)

    def remove(self) -> None:
        """Stop the server and delete its folder: its data and log."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _fail(self, why: str) -> None:
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - the failed start is what matters
            pass
        raise RuntimeError(f"{self.kind} server on {HOST}:{self.port} {why}; log {self.log_path}:\n"
                           f"{tail(self.log_path)}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
