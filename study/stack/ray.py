"""A Ray head node for drivers to join, with token authentication and its own temp folder."""
from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

from pydantic import Field, PrivateAttr

from study.stack.process import Server, executable, free_port, port_in_use, private_folder, write_private

AGENT_PORTS = ("dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "runtime-env-agent-port", "metrics-export-port")


class RayHead(Server):
    """``ray start --head --block``: GCS on ``port``, no usage stats, ``num_cpus`` CPUs (default:
    Ray's count), and the dashboard with its Jobs API (``dashboard_url``) only where ``dashboard``
    says so. Drivers join with :meth:`client_env`: token authentication
    (``RAY_AUTH_MODE=token``) with this head's own token (``<folder>/auth_token``, mode 0600).

    Ray turns ``--node-ip-address=127.0.0.1`` into the machine's outward address, so the node is
    announced on 127.0.0.2, another loopback address (Ray's GCS and raylet still bind every
    interface: no Ray option changes that). The ports Ray would take by fixed default are free
    ports, so heads of several stacks run at once. ``env`` goes to every Ray worker (the S3
    endpoint and keys that trials write checkpoints with). Ray's workers start their own
    process groups: stopping relies on the marker (``process.Server.stop``), not ``ray stop``,
    which would stop every Ray on the machine."""

    kind = "ray"
    start_timeout = 120.0
    node_ip: ClassVar[str] = "127.0.0.2"
    num_cpus: int | None = None
    dashboard: bool = False
    env: dict[str, str] = {}
    ports: dict[str, int] = Field(default_factory=lambda: {name: free_port() for name in AGENT_PORTS})
    temp_dir: Path | None = None
    _log_start: int = PrivateAttr(0)

    def __init__(self, folder: Path | str | None = None, **fields) -> None:
        folder = Path(folder or tempfile.mkdtemp(prefix="vamp-ray-")).resolve()
        super().__init__(folder=folder, **fields)
        link = self.folder / "tmp"
        if self.temp_dir is None:
            # Ray's session sockets add ~65 bytes to this path, and a socket path has at most 107:
            # a long one is a /tmp folder, linked as ``<folder>/tmp``.
            self.temp_dir = link if len(str(link)) <= 40 else Path(tempfile.mkdtemp(prefix="vamp-ray-"))
            if self.temp_dir != link:
                self.folder.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(self.temp_dir)

    @property
    def token_path(self) -> Path:
        return self.folder / "auth_token"

    @property
    def address(self) -> str:
        """The GCS address drivers join (RAY_ADDRESS)."""
        return f"{self.node_ip}:{self.port}"

    url = address

    @property
    def dashboard_url(self) -> str:
        """The dashboard and Jobs API (``ray job submit --address``), where ``dashboard`` is on."""
        return f"http://{self.node_ip}:{self.ports['dashboard-port']}"

    def command(self) -> list[str]:
        cmd = [executable("ray"), "start", "--head", "--block", f"--node-ip-address={self.node_ip}",
               "--port", str(self.port), "--disable-usage-stats", "--temp-dir", str(self.temp_dir),
               f"--include-dashboard={str(self.dashboard).lower()}"]
        if self.dashboard:
            cmd += ["--dashboard-host", self.node_ip]
        for name, port in self.ports.items():
            cmd += [f"--{name}", str(port)]
        return cmd + (["--num-cpus", str(self.num_cpus)] if self.num_cpus is not None else [])

    def ports_used(self) -> list[int]:
        return [self.port, *self.ports.values()]

    def environment(self) -> dict[str, str]:
        env = {**super().environment(), **self.env, **self.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS")
        return env

    def client_env(self) -> dict[str, str]:
        """What drivers that join this head need."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def launch(self) -> None:
        private_folder(self.temp_dir)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        if not self.token_path.exists():
            write_private(self.token_path, secrets.token_hex(32))
        super().launch()

    def ready(self) -> bool:
        """This start's lines of the log (the log keeps earlier starts') say so, and GCS answers."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            started = b"Ray runtime started" in log.read()
        # With the dashboard: its Jobs API answers only once the node's dashboard agent does too.
        ports = [self.port, *([self.ports["dashboard-port"], self.ports["dashboard-agent-listen-port"]]
                              if self.dashboard else [])]
        return started and all(port_in_use(port, self.node_ip) for port in ports)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # sessions, often outside the folder
        super().remove()
