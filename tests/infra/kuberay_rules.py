"""What KubeRay 1.7 and Ray 2.60 need of a RayCluster or RayJob that its CRD cannot say: each
function returns the problems of one rule, as sentences naming the field (none: the rule holds).

- Token authentication goes through ``authOptions`` (mode ``token``, ``secretName``): only then
  does the operator send the token with its own dashboard calls (a RayJob's status polls) and put it
  into the ``wait-gcs-ready`` init container, which copies a worker's ``env`` but not its
  ``envFrom``. ``RAY_AUTH_*`` set by hand would hide that it is missing.
- A RayJob on an existing cluster (``clusterSelector``) must have ``backoffLimit: 0`` (KubeRay
  refuses retries on a cluster it did not create); one with its own cluster retries (>= 1), which is
  safe because its entrypoint is ``study run --resume``.
- Every GPU worker group asks for ``nvidia.com/gpu`` in its limits: KubeRay derives Ray's
  ``num-gpus`` from the limits, and Kubernetes schedules extended resources by them.
- Ray's object store lives in ``/dev/shm``: each group sets ``object-store-memory`` and mounts a
  memory ``emptyDir`` at /dev/shm at least that large (else Ray spills to disk).
- The head's CPU and memory requests equal its limits: KubeRay advertises the limits to Ray.
"""
from __future__ import annotations

import re

RAY_AUTH = re.compile(r"^RAY_AUTH_")
UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("8Gi", "1610612736", "500M") as a number."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * UNITS[unit]


def groups(cluster_spec: dict) -> list[tuple[str, dict]]:
    """(name, group) for the head and every worker group."""
    return [("headGroupSpec", cluster_spec["headGroupSpec"]),
            *((f"workerGroupSpecs[{g['groupName']}]", g) for g in cluster_spec.get("workerGroupSpecs", []))]


def token_auth_problems(cluster_spec: dict, documents: dict[str, dict], pods: list[dict] = ()) -> list[str]:
    """authOptions on, with a Secret; no Ray container (nor the ``pods`` given, e.g. the RayJob's
    submitter) sets RAY_AUTH_* itself, in its env or in a ConfigMap/Secret of ``documents`` it
    takes whole (envFrom)."""
    problems = []
    auth = cluster_spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        problems.append("authOptions.mode: must be token (Ray 2.60 authenticates with a token; only this way does "
                        "the operator send it with its dashboard calls and give it to wait-gcs-ready)")
    if not auth.get("secretName"):
        problems.append("authOptions.secretName: name the Secret holding the token (key auth_token)")
    templates = [(name, group["template"]["spec"]) for name, group in groups(cluster_spec)]
    templates += [(f"pod {i}", pod) for i, pod in enumerate(pods)]
    for where, pod in templates:
        for container in pod["containers"] + pod.get("initContainers", []):
            set_here = [e["name"] for e in container.get("env", []) if RAY_AUTH.match(e["name"])]
            for source in container.get("envFrom", []):
                kind, ref = next((k, v) for k, v in source.items() if k.endswith("Ref"))
                doc = documents.get(f"{'ConfigMap' if kind == 'configMapRef' else 'Secret'}/{ref['name']}", {})
                set_here += [k for k in {**doc.get("data", {}), **doc.get("stringData", {})} if RAY_AUTH.match(k)]
            if set_here:
                problems.append(f"{where}: container {container['name']} sets {', '.join(sorted(set_here))} itself; "
                                "authOptions has the operator inject them")
    return problems


def retry_problems(job_spec: dict) -> list[str]:
    backoff = job_spec.get("backoffLimit", 0)
    if "clusterSelector" in job_spec:
        return [] if backoff == 0 else [f"backoffLimit: {backoff} with clusterSelector; KubeRay refuses retries "
                                        "on a cluster it did not create: must be 0"]
    problems = [] if backoff >= 1 else ["backoffLimit: a RayJob with its own cluster should retry a failed "
                                        "attempt (>= 1): its entrypoint continues the study"]
    if not job_spec.get("entrypoint", "").startswith("study run --resume "):
        problems.append(f"entrypoint: {job_spec.get('entrypoint')!r} is not retry-safe: use `study run --resume "
                        "SPACE` (starts the study, or continues it)")
    return problems


def gpu_problems(cluster_spec: dict) -> list[str]:
    problems = []
    for name, group in groups(cluster_spec)[1:]:
        for container in group["template"]["spec"]["containers"][:1]:  # the Ray container
            limits = container.get("resources", {}).get("limits", {})
            if quantity(limits.get("nvidia.com/gpu", 0)) < 1:
                problems.append(f"{name}: the Ray container's limits ask for no nvidia.com/gpu")
    return problems


def shm_problems(cluster_spec: dict) -> list[str]:
    problems = []
    for name, group in groups(cluster_spec):
        pod = group["template"]["spec"]
        store = group.get("rayStartParams", {}).get("object-store-memory")
        if store is None:
            problems.append(f"{name}: rayStartParams.object-store-memory is not set: Ray sizes the object store "
                            "from memory, not from /dev/shm")
            continue
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
        volume = next((v for v in pod.get("volumes", []) if v["name"] == mounts.get("/dev/shm")), None)
        shm = (volume or {}).get("emptyDir") or {}
        if shm.get("medium") != "Memory" or quantity(shm.get("sizeLimit", 0)) < quantity(store):
            problems.append(f"{name}: /dev/shm ({shm.get('sizeLimit', 'none')}) is smaller than "
                            f"object-store-memory ({store})")
    return problems


def head_resource_problems(cluster_spec: dict) -> list[str]:
    resources = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0].get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    return [f"headGroupSpec: {what} request {requests.get(what)} differs from its limit {limits.get(what)}; KubeRay "
            "advertises the limit" for what in ("cpu", "memory") if requests.get(what) != limits.get(what)]
