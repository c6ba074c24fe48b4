"""infra/k8s: Namespace, Secrets, ConfigMaps, PVCs, Services and workloads against the strict
Kubernetes JSON schemas shipped by ``kubernetes-validate``; RayCluster and RayJob against KubeRay's
own CRDs (infra/k8s/crds/, converted by tests/infra/kuberay_schema.py). Each validator is also
shown to reject a deliberately broken copy."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tests.infra import kuberay_rules as rules
from tests.infra import kuberay_schema
from tests.infra.infra_files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    K8S,
    K8S_VERSION,
    PLACEHOLDER,
    PROJECT_IMAGE_NAME,
    RAYCLUSTER,
    RAYJOB,
    ROOT,
    SECRET_NAMES,
    dicts,
    env_variables,
    image_name,
    k8s_documents,
    kuberay_errors,
    kuberay_object,
    kubernetes_definitions,
    pull_secret_problems,
    secret_key_refs,
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
    secret["stringData"]["AWS_SECRET_ACCESS_KEY"] = 12345
    config = copy.deepcopy(docs["ConfigMap/vamp-study-env"])
    config["datta"] = config.pop("data")
    for broken in (secret, config):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, K8S_VERSION, strict=True)


SECRET_KEYS = {  # the placeholder Secrets of secret.yaml: what the pods read
    "vamp-study-credentials": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME",
                               "MLFLOW_TRACKING_PASSWORD", "STUDY_OPTUNA_STORAGE"},
    "vamp-study-servers": {"POSTGRES_USER", "POSTGRES_PASSWORD", "MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD",
                           "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    "vamp-study-ray-token": {"auth_token"},
}


def test_secret_and_configmaps_hold_what_the_pods_read():
    docs = k8s_documents()
    for name, keys in SECRET_KEYS.items():
        secret = docs[f"Secret/{name}"]
        assert secret["type"] == "Opaque" and set(secret["stringData"]) == keys, name
        assert all(value == "CHANGE_ME" for value in secret["stringData"].values())
    missing = {(name, key) for name, key in secret_key_refs(list(docs.values())) if key not in SECRET_KEYS.get(name, ())}
    assert not missing, f"secretKeyRefs to keys secret.yaml does not document: {sorted(missing)}"
    env = docs["ConfigMap/vamp-study-env"]["data"]
    assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "STUDY_STORAGE"} <= set(env)
    assert not any(SECRET_NAMES.search(key) for key in env)
    spaces = docs["ConfigMap/vamp-study-spaces"]["data"]
    folder = {path.name: path.read_text() for path in sorted((ROOT / "search_spaces").glob("*.yaml"))}
    assert spaces == folder, ("infra/k8s/configmap-spaces.yaml is not search_spaces/ as is: write it again "
                              "(the command in its header)")


KUBERAY_OBJECTS = [RAYCLUSTER, RAYJOB, "RayJob/omniglot-study-on-cluster"]


@pytest.mark.parametrize("key", KUBERAY_OBJECTS)
def test_kuberay_objects_match_the_kuberay_crds(key):
    import jsonschema

    kind = key.split("/")[0]
    jsonschema.Draft202012Validator.check_schema(kuberay_schema.json_schema(kind))
    assert kuberay_errors(kind, k8s_documents()[key]) == []


def test_the_study_rayjob_brings_up_the_long_lived_clusters_spec():
    docs = k8s_documents()
    cluster, job = docs[RAYCLUSTER], docs[RAYJOB]
    assert job["spec"]["entrypoint"] == "study run --resume /config/spaces/omniglot.yaml"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "study/rayjob.yaml's cluster differs from cluster/raycluster.yaml"
    on_cluster = docs["RayJob/omniglot-study-on-cluster"]["spec"]
    assert on_cluster["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert on_cluster["entrypoint"] == job["spec"]["entrypoint"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/config/spaces"]]["configMap"]["name"] == "vamp-study-spaces"
    # The driver (on the head) reads the parsed datasets where STUDY_CACHE_DIR says; the workers do not.
    cache = docs["ConfigMap/vamp-study-env"]["data"]["STUDY_CACHE_DIR"]
    assert volumes[mounts[cache]]["persistentVolumeClaim"]["claimName"] == "vamp-study-datasets"
    head_refs = {next(iter(v.values()))["name"] for v in head["containers"][0]["envFrom"]}
    assert head_refs == {"vamp-study-env", "vamp-study-credentials"}
    for group in cluster["spec"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert [next(iter(v.values()))["name"] for v in worker["envFrom"]] == ["vamp-study-env"]
        keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in worker["env"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, "workers need the S3 key only"


def cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec of the manifests: the RayClusters' and the RayJobs' own."""
    specs = {}
    for key, doc in k8s_documents().items():
        if doc["kind"] == "RayCluster":
            specs[key] = doc["spec"]
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            specs[f"{key}.rayClusterSpec"] = doc["spec"]["rayClusterSpec"]
    return specs


def submitter_pods(cluster_key: str) -> list[dict]:
    doc = k8s_documents()[cluster_key.removesuffix(".rayClusterSpec")]
    return [doc["spec"]["submitterPodTemplate"]["spec"]] if "submitterPodTemplate" in doc.get("spec", {}) else []


@pytest.mark.parametrize("rule", [rules.gpu_problems, rules.shm_problems, rules.head_resource_problems])
@pytest.mark.parametrize("key", [RAYCLUSTER, f"{RAYJOB}.rayClusterSpec"])
def test_ray_clusters_follow_the_operator_rules(key, rule):
    assert rule(cluster_specs()[key]) == []


@pytest.mark.parametrize("key", [RAYCLUSTER, f"{RAYJOB}.rayClusterSpec"])
def test_ray_token_authentication_goes_through_auth_options(key):
    assert rules.token_auth_problems(cluster_specs()[key], k8s_documents(), submitter_pods(key)) == []
    assert cluster_specs()[key]["authOptions"]["secretName"] == "vamp-study-ray-token"
    assert set(k8s_documents()["Secret/vamp-study-ray-token"]["stringData"]) == {"auth_token"}


@pytest.mark.parametrize("key", [k for k in KUBERAY_OBJECTS if k.startswith("RayJob/")])
def test_rayjobs_retry_only_where_kuberay_allows_and_their_entrypoint_resumes(key):
    assert rules.retry_problems(k8s_documents()[key]["spec"]) == []


def _worker(spec: dict) -> dict:
    return spec["workerGroupSpecs"][0]["template"]["spec"]


RULE_BREAKAGES = {  # name: (how to break a cluster spec or job spec, the rule, part of the problem)
    "auth-disabled": (lambda s: s["authOptions"].update(mode="disabled"), "token", "authOptions.mode: must be token"),
    "no-token-secret": (lambda s: s["authOptions"].pop("secretName"), "token", "authOptions.secretName"),
    "token-by-hand": (lambda s: _worker(s)["containers"][0]["env"].append({"name": "RAY_AUTH_MODE", "value": "token"}),
                      "token", "sets RAY_AUTH_MODE itself"),
    "gpu-in-requests-only": (lambda s: _worker(s)["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"),
                             "gpu", "ask for no nvidia.com/gpu"),
    "shm-too-small": (lambda s: _worker(s)["volumes"][0]["emptyDir"].update(sizeLimit="4Gi"), "shm",
                      "/dev/shm (4Gi) is smaller than object-store-memory"),
    "object-store-unset": (lambda s: s["headGroupSpec"]["rayStartParams"].pop("object-store-memory"), "shm",
                           "object-store-memory is not set"),
    "head-cpu-burstable": (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
                           .update(cpu="2"), "head", "cpu request 2 differs from its limit 4"),
    "selector-with-retries": (lambda j: j.update(backoffLimit=2), "retry-on-cluster",
                              "backoffLimit: 2 with clusterSelector"),
    "own-cluster-without-retries": (lambda j: j.update(backoffLimit=0), "retry", "should retry a failed attempt"),
    "entrypoint-that-refuses-a-retry": (lambda j: j.update(entrypoint="study run /config/spaces/omniglot.yaml"),
                                        "retry", "is not retry-safe"),
}


@pytest.mark.parametrize("breakage", RULE_BREAKAGES)
def test_operator_rules_catch_broken_copies(breakage):
    import copy

    breaks, rule, message = RULE_BREAKAGES[breakage]
    docs = k8s_documents()
    if rule.startswith("retry"):
        spec = copy.deepcopy(docs["RayJob/omniglot-study-on-cluster" if rule == "retry-on-cluster" else RAYJOB]["spec"])
        breaks(spec)
        problems = rules.retry_problems(spec)
    else:
        spec = copy.deepcopy(docs[RAYCLUSTER]["spec"])
        breaks(spec)
        check = {"token": lambda s: rules.token_auth_problems(s, docs), "gpu": rules.gpu_problems,
                 "shm": rules.shm_problems, "head": rules.head_resource_problems}[rule]
        problems = check(spec)
    assert len(problems) == 1 and message in problems[0], problems


def test_the_configmaps_and_secrets_do_not_set_ray_token_variables():
    for key, doc in k8s_documents().items():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names = {**doc.get("data", {}), **doc.get("stringData", {})}
            assert not [n for n in names if n.startswith("RAY_AUTH_")], key


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
    doc = kuberay_object(RAYCLUSTER if kind == "RayCluster" else RAYJOB)
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
    job = kuberay_object(RAYJOB)
    job["spec"]["preRunningDeadlineSeconds"] = 600
    job["spec"]["rayClusterSpec"]["authOptions"] = {"mode": "token", "secretName": "x"}
    assert kuberay_errors("RayJob", job) == []
    cluster = kuberay_object(RAYCLUSTER)
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




def kustomizations() -> dict[Path, dict]:
    """Every kustomization.yaml (and Component) under infra/k8s, by its folder."""
    return {path.parent: yaml.safe_load(path.read_text()) for path in sorted(K8S.rglob("kustomization.yaml"))}


def images_of(tree) -> set[str]:
    """The image of every container and init container anywhere in ``tree``: where kustomize's
    images transformer sets them (its LegacyFilter: any ``containers``/``initContainers`` list)."""
    return {c["image"] for node in dicts(tree) for key in ("containers", "initContainers") for c in node.get(key, [])}


def test_kustomizations_apply_the_services_and_one_ray_cluster_at_a_time():
    found = kustomizations()
    base, component = found[K8S], found[K8S / "images"]
    assert component["kind"] == "Component"
    kinds = {}
    for folder, kustomization in found.items():
        if kustomization is component:
            continue
        files = [folder / r for r in kustomization["resources"]]
        assert all(f.is_file() and f.parent == folder for f in files), folder
        assert "secret.yaml" not in kustomization["resources"], "the placeholder Secrets would be applied"
        assert kustomization.get("namespace") == "vamp-study"
        assert [(folder / c).resolve() for c in kustomization["components"]] == [K8S / "images"], folder
        docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
        kinds[folder.name or "k8s"] = {d["kind"] for d in docs}
        pinned = {entry["name"] for entry in component["images"]}
        assert {image_name(i) for i in images_of(docs)} <= pinned, f"{folder}: an image the component does not pin"
    assert not {"RayCluster", "RayJob"} & kinds[K8S.name], "infra/k8s would start a Ray cluster beside the RayJob's"
    assert kinds["study"] == {"RayJob"} and kinds["cluster"] == {"RayCluster", "RayJob"} and kinds["datasets"] == {"Job"}
    # The component pins only images that some manifest runs.
    used = {image_name(i) for i in images_of(list(k8s_documents().values()))}
    assert {entry["name"] for entry in component["images"]} <= used
    assert base["resources"][0] == "namespace.yaml"


def test_every_pod_that_runs_the_project_image_has_the_pull_secret():
    pods = [node for node in dicts(list(k8s_documents().values())) if "containers" in node]
    project = [p for p in pods if any(image_name(c["image"]) == PROJECT_IMAGE_NAME for c in p["containers"])]
    assert len(project) >= 5
    for pod in project:
        assert pull_secret_problems(pod) == [], [c["name"] for c in pod["containers"]]


def test_one_ray_version_everywhere():
    """The clusters' rayVersion is the Ray the image installs (pyproject's pin): KubeRay picks its
    probes and features by rayVersion, and a driver must run the cluster's Ray."""
    pin = re.search(r'"ray\[[a-z,]+\]==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    versions = {key: spec["rayVersion"] for key, spec in cluster_specs().items()}
    assert versions and set(versions.values()) == {pin}, versions
