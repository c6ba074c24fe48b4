"""infra/k8s: Namespace, Secrets, ConfigMaps, PVCs, Services and workloads against the strict
Kubernetes JSON schemas shipped by ``kubernetes-validate``; RayCluster and RayJob against KubeRay's
own CRDs (infra/k8s/crds/, converted by tests/infra/kuberay_schema.py). Each validator is also
shown to reject a deliberately broken copy."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from tests.infra import kuberay_schema
from tests.infra.infra_files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    K8S,
    K8S_VERSION,
    PLACEHOLDER,
    ROOT,
    SECRET_NAMES,
    env_variables,
    k8s_documents,
    kuberay_errors,
    kuberay_object,
    kubernetes_definitions,
)


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


