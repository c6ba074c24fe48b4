"""The k8s check of the operator guide (guide_checks.py): each kubectl, helm, kustomize, docker and
aws command validated statically against infra/k8s and infra/docker."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from tests.infra.guide_checks import COMMON, Command, Shell, parse_options, parse_study
from tests.infra.infra_files import DOCKERFILE, K8S, ROOT, dicts, k8s_documents, placeholder_secrets

NAMESPACE = "vamp-study"
IMAGES_DIR = K8S / "images"

KINDS = {"statefulset": "StatefulSet", "sts": "StatefulSet", "deployment": "Deployment", "deploy": "Deployment",
         "job": "Job", "svc": "Service", "service": "Service", "rayjob": "RayJob", "raycluster": "RayCluster",
         "pvc": "PersistentVolumeClaim", "persistentvolumeclaim": "PersistentVolumeClaim", "configmap": "ConfigMap",
         "cm": "ConfigMap", "secret": "Secret", "pod": "Pod", "po": "Pod", "networkpolicy": "NetworkPolicy"}
KUBECTL_VALUES = {"-n", "--namespace", "-f", "--filename", "-k", "--kustomize", "-l", "--selector", "-o", "--output",
                  "-c", "--container", "--for", "--timeout", "--tail", "--since", "--replicas", "--type", "--context",
                  "--from-literal", "--from-file", "--docker-server", "--docker-username", "--docker-password",
                  "--docker-email", "--field-manager", "-p", "--patch"}
TARGET_VERBS = {"logs", "exec", "port-forward", "attach"}  # one object, then a container, ports or a command
REFERENCE_VERBS = {"get", "describe", "delete", "wait", "scale", "rollout", "edit", "label", "annotate", "patch"}


@functools.cache
def k8s_objects() -> frozenset[str]:
    """Kind/name of the manifests' objects and of what they bring about: a RayJob's submitter Job
    (KubeRay names it after the RayJob), a StatefulSet's pods and claims (NAME-0, TEMPLATE-NAME-0)."""
    objects = set(k8s_documents())
    for key, doc in k8s_documents().items():
        kind, name = key.split("/", 1)
        objects |= {f"Job/{name}"} if kind == "RayJob" else set()
        for i in range(doc["spec"].get("replicas", 1) if kind == "StatefulSet" else 0):
            objects |= {f"Pod/{name}-{i}"} | {f"PersistentVolumeClaim/{t['metadata']['name']}-{name}-{i}"
                                              for t in doc["spec"].get("volumeClaimTemplates", [])}
    return frozenset(objects)


def check_reference(command: Command, shell: Shell, kind: str, name: str | None) -> None:
    """KIND [NAME]: a kind of KINDS (plurals too); NAME an object of k8s_objects or created earlier."""
    word = kind.lower().split(".")[0]
    full = KINDS.get(word) or KINDS.get(word.removesuffix("s")) or KINDS.get(word.removesuffix("ies") + "y")
    if full is None:
        raise command.fail(f"unknown kind {kind} (known: {', '.join(sorted(KINDS))})")
    if name and not name.startswith("__SUBST") and f"{full}/{name}" not in k8s_objects() | shell.created:
        raise command.fail(f"no {full} {name} in infra/k8s (nor created earlier in the guide)")


def references(args: list[str]) -> list[tuple[str, str | None]]:
    """(kind, name) of ``KIND/NAME ...`` or ``KIND [NAME ...]`` (``key=value`` words left out)."""
    refs = [a for a in args if "=" not in a]
    if refs and "/" in refs[0]:
        return [tuple(r.split("/", 1)) for r in refs]
    return ([(refs[0], name) for name in refs[1:]] or [(refs[0], None)]) if refs else []


def kubectl(command: Command, shell: Shell) -> None:
    """kubectl in namespace vamp-study; its files, kustomizations and objects exist."""
    options, rest, _ = parse_options(command.words[1:], KUBECTL_VALUES, until_positional=True)
    verb = (rest or [""])[0]
    more, args, after = parse_options(rest[1:], KUBECTL_VALUES - ({"-f", "-p"} if verb in TARGET_VERBS else set()))
    options += more  # (logs -f: follow, -p: previous)
    namespaces = {v for n, v in options if n in ("-n", "--namespace")}
    if namespaces - {NAMESPACE} or (verb not in ("apply", "kustomize") and not namespaces):
        raise command.fail(f"kubectl {verb} needs -n {NAMESPACE}")
    for path in [v for n, v in options if n in ("-f", "--filename") and v != "-"]:
        if not (shell.cwd / path).exists():
            raise command.fail(f"no {path} in the repository")
    for folder in [v for n, v in options if n in ("-k", "--kustomize")] + (args[:1] if verb == "kustomize" else []):
        if not (shell.cwd / folder / "kustomization.yaml").is_file():
            raise command.fail(f"no kustomization.yaml in {folder}")
    if verb == "create":
        kubectl_create(command, shell, args, options)
    elif verb in TARGET_VERBS:
        target = (args or [""])[0]
        check_reference(command, shell, *(target.split("/", 1) if "/" in target else ("pod", target)))
        if verb == "exec" and after[:1] == ["study"]:
            parse_study(after[1:], command)
    elif verb in REFERENCE_VERBS:
        for kind, name in references(args[1:] if verb == "rollout" else args):
            check_reference(command, shell, kind, name)
    elif verb not in ("apply", "kustomize"):
        raise command.fail(f"kubectl {verb}: not a verb this check knows")


def kubectl_create(command: Command, shell: Shell, args: list[str], options: list[tuple[str, str]]) -> None:
    """``secret generic NAME`` with exactly the keys of NAME in infra/k8s/secret.yaml, ``secret
    docker-registry NAME`` with the manifests' imagePullSecrets name, ``configmap NAME`` of theirs."""
    padded = args + ["", "", ""]
    kind, variant, name = padded[:3] if padded[0] == "secret" else (padded[0], "", padded[1])
    if (kind, variant) == ("secret", "generic"):
        secrets = placeholder_secrets()
        if name not in secrets:
            raise command.fail(f"no Secret {name} in infra/k8s/secret.yaml")
        given = {v.split("=", 1)[0] if n == "--from-literal" or "=" in v else Path(v).name
                 for n, v in options if n in ("--from-literal", "--from-file")}
        if given != secrets[name]:
            raise command.fail(f"Secret {name}: missing keys {sorted(secrets[name] - given)}, "
                               f"unknown keys {sorted(given - secrets[name])} (infra/k8s/secret.yaml)")
    elif (kind, variant) == ("secret", "docker-registry"):
        names = {secret["name"] for node in dicts(list(k8s_documents().values()))
                 for secret in node.get("imagePullSecrets", [])}
        if name not in names:
            raise command.fail(f"the manifests pull images with {', '.join(sorted(names))}, not {name}")
    elif kind == "configmap":
        check_reference(command, shell, kind, name)
    else:
        raise command.fail("kubectl create: only secret generic, secret docker-registry, configmap here")
    shell.created.add(f"{'ConfigMap' if kind == 'configmap' else 'Secret'}/{name}")


def helm(command: Command, shell: Shell) -> None:
    """``helm repo add|update``; ``helm install|upgrade NAME kuberay/kuberay-operator --version X``,
    X the KubeRay version of infra/k8s/crds/README.md."""
    options, args, _ = parse_options(command.words[1:], {"-n", "--namespace", "--version", "-f", "--values", "--set"})
    if args[:2] in (["repo", "add"], ["repo", "update"]):
        return
    if args[:1] not in (["install"], ["upgrade"]) or args[2:3] != ["kuberay/kuberay-operator"]:
        raise command.fail("helm: only repo add|update and install|upgrade of kuberay/kuberay-operator here")
    kuberay = re.search(r"\(v(\d+\.\d+\.\d+)\)", (K8S / "crds" / "README.md").read_text())[1]
    if dict(options).get("--version") != kuberay:
        raise command.fail(f"--version {dict(options).get('--version')}: infra/k8s/crds/ holds KubeRay {kuberay}")


def kustomize(command: Command, shell: Shell) -> None:
    """``kustomize edit set image NAME=...`` in infra/k8s/images, NAME one of its ``images:``;
    ``kustomize build DIR`` of a kustomization."""
    args = command.words[1:]
    if args[:1] == ["build"] and (shell.cwd / (args[1:] or ["."])[0] / "kustomization.yaml").is_file():
        return
    if args[:3] != ["edit", "set", "image"]:
        raise command.fail("kustomize: only edit set image, and build DIR of a kustomization, here")
    if shell.cwd != IMAGES_DIR:
        raise command.fail(f"run it in {IMAGES_DIR.relative_to(ROOT)} (cd there first)")
    names = {i["name"] for i in yaml.safe_load((IMAGES_DIR / "kustomization.yaml").read_text())["images"]}
    for name in [spec.split("=", 1)[0] if "=" in spec else re.split(r"[:@]", spec)[0] for spec in args[3:]]:
        if name not in names:
            raise command.fail(f"{name} is not an image of infra/k8s/images ({', '.join(sorted(names))})")


def docker_image(command: Command, shell: Shell) -> None:
    """``docker build -f infra/docker/Dockerfile ... CONTEXT`` (a folder); ``docker push|tag|login``."""
    options, args, _ = parse_options(command.words[1:], {"-f", "--file", "-t", "--tag", "--build-arg", "--platform"})
    dockerfile = dict(options).get("-f") or dict(options).get("--file") or "Dockerfile"
    if args[:1] == ["build"]:
        if (shell.cwd / dockerfile).resolve() != DOCKERFILE or not (shell.cwd / (args[1:] or ["?"])[0]).is_dir():
            raise command.fail(f"docker build -f {DOCKERFILE.relative_to(ROOT)} CONTEXT, from the repository root")
    elif args[:1] not in (["push"], ["tag"], ["login"]):
        raise command.fail("docker: only build, push, tag, login here")


def aws(command: Command, shell: Shell) -> None:
    """``aws [--endpoint-url URL] s3 sync|cp|ls ...``: the bucket copies of a backup."""
    _, args, _ = parse_options(command.words[1:], {"--endpoint-url", "--region", "--profile"})
    if args[:1] != ["s3"] or args[1:2] not in (["sync"], ["cp"], ["ls"]):
        raise command.fail("aws: only s3 sync, cp, ls here")


PROGRAMS = {**COMMON, "kubectl": kubectl, "helm": helm, "kustomize": kustomize, "docker": docker_image, "aws": aws}
