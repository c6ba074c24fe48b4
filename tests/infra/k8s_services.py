"""infra/k8s's servers (PostgreSQL, MLflow, the dataset volume and its fill Job), for
test_kubernetes_services.py and test_kubernetes_services_live.py: their objects, pods and the
environments Kubernetes would give their containers."""

from __future__ import annotations

import re

from tests.infra.infra_files import (
    K8S,
    SECRET_NAMES,
    k8s_documents,
)

FILES = ("postgres.yaml", "mlflow.yaml", "datasets.yaml", "datasets/fill-job.yaml")
PROJECT_IMAGE = "registry.example.com/vamp-study:0.1.0"
POSTGRES, MLFLOW, MLFLOW_INIT, FILL = ("StatefulSet/vamp-study-postgres", "Deployment/vamp-study-mlflow",
                                       "Job/vamp-study-mlflow-init", "Job/vamp-study-datasets-fill")
SERVERS, CREDENTIALS = "vamp-study-servers", "vamp-study-credentials"

# The Secret keys each pod reads (secretKeyRef), and no other.
SECRET_KEYS_READ = {
    POSTGRES: {(SERVERS, "POSTGRES_USER"), (SERVERS, "POSTGRES_PASSWORD")},
    MLFLOW: {(SERVERS, "POSTGRES_USER"), (SERVERS, "POSTGRES_PASSWORD"), (SERVERS, "MLFLOW_ADMIN_USERNAME"),
             (SERVERS, "MLFLOW_ADMIN_PASSWORD"), (SERVERS, "MLFLOW_FLASK_SERVER_SECRET_KEY"),
             (CREDENTIALS, "AWS_ACCESS_KEY_ID"), (CREDENTIALS, "AWS_SECRET_ACCESS_KEY")},
    MLFLOW_INIT: {(SERVERS, "MLFLOW_ADMIN_USERNAME"), (SERVERS, "MLFLOW_ADMIN_PASSWORD"),
                  (CREDENTIALS, "MLFLOW_TRACKING_USERNAME"), (CREDENTIALS, "MLFLOW_TRACKING_PASSWORD")},
    FILL: set(),
}
CREDENTIAL_NAMES = re.compile(SECRET_NAMES.pattern + r"|(USER|USERNAME|PASSWORD|OPTUNA_STORAGE)$")


def documents() -> dict[str, dict]:
    """kind/name -> a fresh copy of each object of these servers' manifests (FILES)."""
    return k8s_documents([K8S / name for name in FILES])


def pod(doc: dict) -> dict:
    """The pod spec of a StatefulSet, Deployment or Job."""
    return doc["spec"]["template"]["spec"]


def pod_labels(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"]["labels"]


def workloads(docs: dict[str, dict]) -> dict[str, dict]:
    return {key: pod(doc) for key, doc in docs.items() if doc["kind"] in ("StatefulSet", "Deployment", "Job")}


def env_entry(container: dict, name: str) -> dict:
    return next(e for e in container["env"] if e["name"] == name)


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def config_env() -> dict[str, str]:
    """configmap-env.yaml's data."""
    return k8s_documents()["ConfigMap/vamp-study-env"]["data"]


def resolve_env(container: dict, configmap: dict[str, str], secret_values: dict[str, dict[str, str]]) -> dict:
    """The container's environment as Kubernetes makes it, from the given ConfigMap and Secret values."""
    env = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in source:
            assert source["configMapKeyRef"]["name"] == "vamp-study-env", entry
            env[entry["name"]] = configmap[source["configMapKeyRef"]["key"]]
        else:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secret_values[ref["name"]][ref["key"]]
    return env


