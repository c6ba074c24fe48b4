"""infra/k8s's servers: PostgreSQL (postgres.yaml), MLflow (mlflow.yaml) and the dataset volume
with its fill Job (datasets.yaml, datasets/fill-job.yaml).

Static: the strict Kubernetes schemas; the Services, selectors and ports are those that
configmap-env.yaml's URIs and MLflow's POSTGRES_HOST name; MLflow answers every in-cluster name of
its Service; each pod reads only its own keys of the placeholder Secrets, never a literal
credential; the project image is pulled with the registry Secret; the init script is compose's.

Live (test_kubernetes_services_live.py), with the real programs on 127.0.0.1: a PostgreSQL 15 cluster set up by the init ConfigMap's
script and probed with the StatefulSet's own probe and preStop commands; the Deployment's own
MLflow command line (through infra/docker/mlflow_entrypoint.py, artifacts to SeaweedFS) answering
Host headers of the in-cluster name and refusing others; the init Job's command creating the
study user; the fill Job's command making a cache that ``load_dataset`` reads.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.infra.infra_files import (
    COMPOSE_DIR,
    DOCKERFILE,
    INFRA,
    K8S_VERSION,
    PROJECT_IMAGE_NAME,
    PULL_SECRETS,
    k8s_documents,
    kubernetes_definitions,
    load_compose,
    placeholder_secrets,
    pull_secret_problems,
    secret_key_refs,
)
from tests.infra.k8s_services import (
    CREDENTIAL_NAMES,
    FILL,
    MLFLOW,
    MLFLOW_INIT,
    POSTGRES,
    PROJECT_IMAGE,
    SECRET_KEYS_READ,
    SERVERS,
    arg_after,
    config_env,
    documents,
    env_entry,
    pod,
    pod_labels,
    workloads,
)

# --------------------------------------------------------------------------- static checks

BREAKAGES = {  # how a copy of an object is broken: the schema must refuse each
    "probe-typo": (POSTGRES, lambda d: pod(d)["containers"][0]["readinessProbe"].update(exec={"cmd": ["true"]})),
    "string-replicas": (MLFLOW, lambda d: d["spec"].update(replicas="1")),
    "job-field-typo": (FILL, lambda d: d["spec"].update(backoffLimits=3)),
    "pvc-typo": ("PersistentVolumeClaim/vamp-study-datasets",
                 lambda d: d["spec"]["resources"].update(request=d["spec"]["resources"].pop("requests"))),
}


def test_objects_match_the_strict_kubernetes_schemas():
    _, kv = kubernetes_definitions()
    docs = documents()
    assert set(docs) == {"Service/postgres", "ConfigMap/vamp-study-postgres-init", POSTGRES,
                         "NetworkPolicy/vamp-study-postgres", "Service/mlflow", MLFLOW, MLFLOW_INIT,
                         "PersistentVolumeClaim/vamp-study-datasets", FILL}
    for key, doc in docs.items():
        kv.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "vamp-study"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vamp-study"
        assert k8s_documents()[key] == doc, f"another file under infra/k8s defines {key} too"
    for doc in docs.values():
        if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
            assert pod_labels(doc)["app.kubernetes.io/part-of"] == "vamp-study"


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_schema_check_refuses_broken_copies(breakage):
    _, kv = kubernetes_definitions()
    key, breaks = BREAKAGES[breakage]
    doc = documents()[key]
    breaks(doc)
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def serving(docs: dict[str, dict], service_name: str, port: int) -> tuple[str, dict, int]:
    """(workload, container, containerPort) behind port ``port`` of Service ``service_name``."""
    service = docs[f"Service/{service_name}"]["spec"]
    entry = next(p for p in service["ports"] if p["port"] == port)
    behind = [(key, doc) for key, doc in docs.items() if doc["kind"] in ("StatefulSet", "Deployment")
              and service["selector"].items() <= pod_labels(doc).items()]
    assert len(behind) == 1, f"Service {service_name} selects {[k for k, _ in behind]}"
    key, doc = behind[0]
    assert doc["spec"]["selector"]["matchLabels"].items() <= pod_labels(doc).items()
    for container in pod(doc)["containers"]:
        for container_port in container.get("ports", []):
            if entry["targetPort"] in (container_port["name"], container_port["containerPort"]):
                return key, container, container_port["containerPort"]
    raise AssertionError(f"Service {service_name}: no container port {entry['targetPort']!r}")


def test_services_are_where_the_configmap_and_mlflow_point():
    docs = documents()
    uri = urlsplit(config_env()["MLFLOW_TRACKING_URI"])
    name, namespace = uri.hostname.split(".")[:2]
    assert uri.hostname == f"{name}.{namespace}.svc.cluster.local" and namespace == "vamp-study"
    key, container, port = serving(docs, name, uri.port)
    assert key == MLFLOW and container["args"][:2] == ["mlflow", "server"]
    assert arg_after(container["args"], "--port") == str(port)
    # MLflow's database host is the Service of the StatefulSet, on PostgreSQL's default port.
    postgres_host = env_entry(container, "POSTGRES_HOST")["value"]
    assert "POSTGRES_PORT" not in {e["name"] for e in container["env"]}
    key, container, port = serving(docs, postgres_host, 5432)
    assert key == POSTGRES and port == 5432
    assert not {"PGPORT"} & {e["name"] for e in container["env"]}
    # Artifacts go to the S3 endpoint of configmap-env.yaml, in the bucket of STUDY_STORAGE.
    mlflow = pod(docs[MLFLOW])["containers"][0]
    assert env_entry(mlflow, "MLFLOW_S3_ENDPOINT_URL")["valueFrom"]["configMapKeyRef"]["key"] == "AWS_ENDPOINT_URL"
    bucket = urlsplit(config_env()["STUDY_STORAGE"]).netloc
    assert arg_after(mlflow["args"], "--artifacts-destination") == f"s3://{bucket}/mlflow"


def allowed_hosts(args: list[str]) -> list[str]:
    """--allowed-hosts as MLflow reads it."""
    from mlflow.server.security_utils import get_allowed_hosts_from_env

    os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = arg_after(args, "--allowed-hosts")
    try:
        return get_allowed_hosts_from_env()
    finally:
        del os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"]


def host_problems(args: list[str]) -> list[str]:
    """Names a client of MLflow uses that it would refuse, and others it would answer."""
    from mlflow.server.security_utils import is_allowed_host_header

    uri = urlsplit(config_env()["MLFLOW_TRACKING_URI"])
    labels = uri.hostname.split(".")  # mlflow, vamp-study, svc, cluster, local
    names = [".".join(labels[:n]) for n in (1, 2, 3)] + [uri.hostname]
    wanted = [f"{name}{port}" for name in [*names, "localhost", "127.0.0.1"] for port in ("", f":{uri.port}")]
    wanted += ["localhost:8080"]  # `kubectl port-forward svc/mlflow 8080:5000`
    unwanted = ["mlflow.elsewhere.svc.cluster.local:5000", "10.1.2.3:5000", "attacker.example:5000", ""]
    hosts = allowed_hosts(args)
    return ([f"refuses {h!r}" for h in wanted if not is_allowed_host_header(hosts, h)]
            + [f"answers {h!r}" for h in unwanted if is_allowed_host_header(hosts, h)])


def test_mlflow_answers_every_in_cluster_name_of_its_service_and_no_other():
    args = pod(documents()[MLFLOW])["containers"][0]["args"]
    assert host_problems(args) == []
    assert "mlflow.vamp-study.svc.cluster.local:5000" in allowed_hosts(args)
    broken = list(args)
    broken[broken.index("--allowed-hosts") + 1] = "mlflow,mlflow:5000,*.svc.cluster.local:5000"
    assert host_problems(broken) == ["refuses 'mlflow.vamp-study'", "refuses 'mlflow.vamp-study:5000'",
                                     "refuses 'mlflow.vamp-study.svc'", "refuses 'mlflow.vamp-study.svc:5000'",
                                     "refuses 'mlflow.vamp-study.svc.cluster.local'", "refuses 'localhost'",
                                     "refuses 'localhost:5000'", "refuses '127.0.0.1'", "refuses '127.0.0.1:5000'",
                                     "refuses 'localhost:8080'",
                                     "answers 'mlflow.elsewhere.svc.cluster.local:5000'"]


ENV_DIFFERENCES = {  # (variables only the manifest sets, those only compose sets)
    MLFLOW: (set(), {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}),  # the entrypoint sets it anyway
    MLFLOW_INIT: ({"MLFLOW_WAIT_SECONDS"}, set()),          # longer than its 120 s: images are pulled
}


def test_mlflow_and_its_init_job_run_composes_commands():
    services = load_compose()["services"]
    docs = documents()
    for key, service in ((MLFLOW, services["mlflow"]), (MLFLOW_INIT, services["mlflow-init"])):
        container = pod(docs[key])["containers"][0]
        assert container["image"] == PROJECT_IMAGE
        assert container["command"] == service["entrypoint"], key
        compose_args = [str(a) for a in service.get("command", [])]
        assert len(container.get("args", [])) == len(compose_args), key
        for mine, theirs in zip(container.get("args", []), compose_args):
            assert mine == theirs or "${" in theirs, (key, mine, theirs)  # compose's interpolated values differ
        # The same variables, but for those of ENV_DIFFERENCES.
        names = {e["name"] for e in container["env"]}
        only_here, only_compose = ENV_DIFFERENCES[key]
        assert names - only_here == set(service["environment"]) - only_compose, key


def credential_problems(pod_spec: dict) -> list[str]:
    """Credentials written into the manifest, and whole Secrets given to a container."""
    problems = []
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        for entry in container.get("env", []):
            if CREDENTIAL_NAMES.search(entry["name"]) and "secretKeyRef" not in entry.get("valueFrom", {}):
                problems.append(f"{container['name']}: {entry['name']} is not from a Secret")
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                problems.append(f"{container['name']}: envFrom takes the whole Secret {source['secretRef']['name']}")
    return problems


def test_each_pod_reads_its_own_secret_keys_and_no_literal_credential():
    placeholders = placeholder_secrets()
    pods = workloads(documents())
    assert set(pods) == set(SECRET_KEYS_READ)
    for key, pod_spec in pods.items():
        refs = secret_key_refs(pod_spec)
        assert refs == SECRET_KEYS_READ[key], key
        missing = {(name, k) for name, k in refs if k not in placeholders.get(name, set())}
        assert not missing, f"{key} reads keys that secret.yaml's placeholders lack: {sorted(missing)}"
        assert credential_problems(pod_spec) == [], key
    broken = copy.deepcopy(pods[MLFLOW])
    password = env_entry(broken["containers"][0], "POSTGRES_PASSWORD")
    del password["valueFrom"]
    password["value"] = "hunter2hunter2"
    broken["containers"][0]["envFrom"] = [{"secretRef": {"name": SERVERS}}]
    assert credential_problems(broken) == ["mlflow: POSTGRES_PASSWORD is not from a Secret",
                                           "mlflow: envFrom takes the whole Secret vamp-study-servers"]


def image_problems(pod_spec: dict) -> list[str]:
    images = {c["image"] for c in pod_spec["containers"] + pod_spec.get("initContainers", [])}
    return [f"unknown image {i}" for i in images - {PROJECT_IMAGE, "postgres:16-bookworm"}] + pull_secret_problems(pod_spec)


def test_the_project_image_is_pulled_with_the_registry_secret():
    pods = workloads(documents())
    for key, pod_spec in pods.items():
        assert image_problems(pod_spec) == [], key
    assert "imagePullSecrets" not in pods[POSTGRES]  # a public image
    broken = copy.deepcopy(pods[FILL])
    del broken["imagePullSecrets"]
    assert image_problems(broken) == [f"runs {PROJECT_IMAGE_NAME} without imagePullSecrets {PULL_SECRETS}"]


def load_entrypoint():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlflow_entrypoint", INFRA / "docker" / "mlflow_entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pods_run_as_non_root_with_limits_and_without_service_links():
    for key, pod_spec in workloads(documents()).items():
        context = pod_spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, key
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, key
        assert pod_spec["enableServiceLinks"] is False, key
        for container in pod_spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, key
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], key
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    # Why no service links: the Service "postgres" would give MLflow's pod this POSTGRES_PORT.
    linked = {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p", "POSTGRES_PORT": "tcp://10.96.0.7:5432"}
    with pytest.raises(ValueError):
        urlsplit(load_entrypoint().database_uri(linked, "mlflow")).port


def test_postgres_runs_composes_init_script_and_only_this_namespace_reaches_it():
    docs = documents()
    init = docs["ConfigMap/vamp-study-postgres-init"]["data"]
    assert init == {"10-databases.sh": (COMPOSE_DIR / "postgres-init.sh").read_bytes().decode()}, (
        "infra/k8s/postgres.yaml's init script differs from infra/compose/postgres-init.sh: copy it again")
    stateful = docs[POSTGRES]
    container = pod(stateful)["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(stateful)["volumes"]}
    init_volume = volumes[mounts["/docker-entrypoint-initdb.d"]]["configMap"]
    assert init_volume["name"] == "vamp-study-postgres-init" and init_volume["defaultMode"] & 0o111
    # The data folder is below the volume's mount point, the volume one of the claim template.
    data = Path(env_entry(container, "PGDATA")["value"])
    claim = stateful["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mount = next(Path(path) for path, name in mounts.items() if name == claim)
    assert mount in data.parents
    # The image, databases and names are compose's and MLflow's.
    compose = load_compose()["services"]["postgres"]
    assert container["image"] == compose["image"]
    mlflow = pod(docs[MLFLOW])["containers"][0]
    assert (env_entry(container, "POSTGRES_DB")["value"] == compose["environment"]["POSTGRES_DB"]
            == env_entry(mlflow, "MLFLOW_DB")["value"])
    assert (env_entry(container, "MLFLOW_AUTH_DB")["value"] == compose["environment"]["MLFLOW_AUTH_DB"]
            == env_entry(mlflow, "MLFLOW_AUTH_DB")["value"])
    assert "-h 127.0.0.1" in container["readinessProbe"]["exec"]["command"][-1]  # TCP: not ready during init
    policy = docs["NetworkPolicy/vamp-study-postgres"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(stateful).items()
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 5432}]}]


def test_the_fill_job_writes_where_the_head_reads():
    docs = documents()
    job = docs[FILL]
    container = pod(job)["containers"][0]
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), flags=re.M).group(1)
    assert json.loads(entrypoint) == ["tini", "--", "study"] and "command" not in container
    assert container["args"] == ["data", "fetch", "all"]
    cache = env_entry(container, "STUDY_CACHE_DIR")["valueFrom"]["configMapKeyRef"]
    assert cache == {"name": "vamp-study-env", "key": "STUDY_CACHE_DIR"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod(job)["volumes"]}
    assert [mounts[name] for name, claim in claims.items() if claim == "vamp-study-datasets"] == [
        config_env()["STUDY_CACHE_DIR"]]
    claim = docs["PersistentVolumeClaim/vamp-study-datasets"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim
    assert pod(job)["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    assert pod(docs[MLFLOW_INIT])["restartPolicy"] == "Never" and docs[MLFLOW_INIT]["spec"]["backoffLimit"] >= 1


