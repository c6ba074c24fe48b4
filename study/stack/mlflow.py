"""The MLflow tracking server: a database backend store, artifacts proxied to a destination (an
S3 bucket in the stack), so clients need no storage keys."""
from __future__ import annotations

import configparser
import importlib.util
import io
import secrets
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from study.stack.process import HOST, Server, executable, write_private


class MlflowServer(Server):
    """``mlflow server`` (MLflow 3.17, uvicorn) with ``--serve-artifacts``: the default artifact
    root is ``mlflow-artifacts:/``. ``env`` (the S3 endpoint and keys) goes to the server only.
    Job execution is off (it would start about 2 GB of workers).

    ``auth=(user, password)`` turns on MLflow's basic authentication: that user is the admin, its
    user store is ``basic_auth.db`` in ``folder``, requests without credentials get 401, and
    clients set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (:meth:`client_env`)."""

    kind = "mlflow"
    start_timeout = 120.0
    backend_store_uri: str
    artifacts_destination: str
    env: dict[str, str] = {}
    workers: int = 1
    auth: tuple[str, str] | None = None

    def __init__(self, backend_store_uri: str, artifacts_destination: str, **fields) -> None:
        fields["folder"] = Path(fields.get("folder") or tempfile.mkdtemp(prefix="vamp-mlflow-")).resolve()
        super().__init__(backend_store_uri=backend_store_uri, artifacts_destination=artifacts_destination, **fields)

    tracking_uri = Server.url

    def command(self) -> list[str]:
        hosts = f"{HOST}:{self.port},localhost:{self.port},{HOST},localhost"
        return [executable("mlflow"), "server", "--host", HOST, "--port", str(self.port),
                "--serve-artifacts", "--artifacts-destination", self.artifacts_destination,
                "--default-artifact-root", "mlflow-artifacts:/", "--workers", str(self.workers),
                "--allowed-hosts", hosts, *(["--app-name", "basic-auth"] if self.auth else [])]

    def environment(self) -> dict[str, str]:
        # The store URI holds the database password: in the environment, not on the command line
        # that every user of the machine can read.
        env = {**super().environment(), **self.env, "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri,
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if self.auth:
            config = configparser.ConfigParser()
            config["mlflow"] = {
                "default_permission": "READ", "database_uri": f"sqlite:///{self.folder / 'basic_auth.db'}",
                "admin_username": self.auth[0], "admin_password": self.auth[1],
                "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
            text = io.StringIO()
            config.write(text)
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_private(self.folder / "basic_auth.ini", text.getvalue()))
            secret = self.folder / "flask_secret"
            if not secret.exists():
                write_private(secret, secrets.token_hex(32))
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret.read_text()
        return env

    def launch(self) -> None:
        if self.auth and importlib.util.find_spec("flask_wtf") is None:
            raise RuntimeError("basic authentication needs the mlflow[auth] extra (Flask-WTF): "
                               "pip install 'mlflow[auth]==<the mlflow version>'")
        super().launch()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.tracking_uri + "/health", timeout=2) as response:
                return response.status == 200 and response.read().strip() == b"OK"
        except (OSError, urllib.error.HTTPError):
            return False

    def client_env(self) -> dict[str, str]:
        """What MLflow clients need: the tracking URI and, with auth, the credentials."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if self.auth:
            env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = self.auth
        return env
