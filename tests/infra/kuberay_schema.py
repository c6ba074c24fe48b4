"""KubeRay's own CRDs (infra/k8s/crds/) as JSON Schemas (Draft 2020-12) for the ``jsonschema`` package.

A CRD describes its objects with an OpenAPI v3 ``openAPIV3Schema`` plus Kubernetes extensions.
``json_schema(kind)`` rewrites the one of the served version ``v1`` node by node:

- ``x-kubernetes-int-or-string: true``: an integer or a string (controller-gen already writes this
  ``anyOf``, and the Kubernetes quantity ``pattern`` that the string must match where it is a
  quantity; percent and port names are strings without one);
- ``x-kubernetes-preserve-unknown-fields: true``: any further property is allowed;
- an object with ``properties`` and no ``additionalProperties`` rejects other fields
  (``additionalProperties: false``), as ``kubectl apply --validate=strict`` does: the API server
  itself would drop them silently. An object with neither takes anything: the top-level
  ``metadata``, which the CRD leaves to the API server's own ObjectMeta (the pod templates'
  ``metadata``, spelled out in the CRD, is strict);
- ``nullable: true``: null is allowed too;
- ``format: int32`` / ``int64``: the integer's bounds;
- the other ``x-kubernetes-*`` keys are dropped. ``list-type``, ``list-map-keys`` and ``map-type``
  only say how lists and maps merge (and that keys are unique), and ``x-kubernetes-validations``
  are CEL rules (``managedBy``'s allowed values, RayJob's deletion rules, immutable fields), which
  jsonschema cannot evaluate: those are not checked here. Nor is what the operator checks in its Go
  code and the CRD does not say (``submissionMode`` is any string to the CRD, for example).

The top-level object must have ``apiVersion: ray.io/v1`` and its ``kind``. Defaults are not applied.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

CRDS = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
VERSION = "v1"
INTEGER_BOUNDS = {"int32": 2**31, "int64": 2**63}  # an intN lies in [-bound, bound - 1]
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the ~1 MB files far faster


def load_crd(kind: str) -> dict:
    """The CustomResourceDefinition of ``kind`` (RayCluster or RayJob) in infra/k8s/crds/."""
    with (CRDS / CRD_FILES[kind]).open() as file:
        crd = yaml.load(file, Loader=YAML_LOADER)
    assert crd["spec"]["names"]["kind"] == kind, f"{CRD_FILES[kind]} defines {crd['spec']['names']['kind']}"
    return crd


def served_schema(crd: dict, version: str = VERSION) -> dict:
    """The ``openAPIV3Schema`` of the served ``version`` of ``crd``."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry["served"]:
            return entry["schema"]["openAPIV3Schema"]
    raise LookupError(f"{crd['metadata']['name']} does not serve {version}")


def to_json_schema(node: dict) -> dict:
    """A CRD schema node and everything under it as JSON Schema (new dicts; ``node`` is left as is)."""
    schema = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-") and key != "nullable"}
    if "properties" in schema:
        schema["properties"] = {name: to_json_schema(sub) for name, sub in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    if "items" in schema:
        schema["items"] = to_json_schema(schema["items"])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema:
            schema[keyword] = [to_json_schema(sub) for sub in schema[keyword]]

    if node.get("x-kubernetes-int-or-string"):
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = True
    elif "properties" in schema:
        schema.setdefault("additionalProperties", False)
    bound = INTEGER_BOUNDS.get(schema.get("format"))
    if bound and schema.get("type") == "integer":
        schema.setdefault("minimum", -bound)
        schema.setdefault("maximum", bound - 1)
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


@cache
def json_schema(kind: str) -> dict:
    """The JSON Schema of a ``ray.io/v1`` ``kind`` object from KubeRay's CRD, built once a process."""
    crd = load_crd(kind)
    schema = to_json_schema(served_schema(crd))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{VERSION}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = ["apiVersion", "kind", *schema.get("required", [])]
    return schema
