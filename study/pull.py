"""`study pull` and `study score models:/...`: fetch a registered model from the MLflow Model
Registry. Light on purpose: no Ray, no Optuna (a user pulling a model needs neither)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainables.errors import InputError

#: The alias that the registry moves to a group's best version (study.registry).
ALIAS = "champion"

MODEL_REF = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?")


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """NAME, NAME@ALIAS or NAME/VERSION (optionally as models:/...) -> (name, alias, version);
    with neither, the alias is `champion`."""
    match = MODEL_REF.fullmatch(reference.removeprefix("models:/"))
    if not match:
        raise InputError(f"{reference!r} is not a registered model reference; use NAME, NAME@ALIAS or NAME/VERSION")
    return match["name"], None if match["version"] else (match["alias"] or ALIAS), match["version"]


def pull(reference: str, out: Path, tracking_uri: str) -> Path:
    """Download a registered model's files (weights.pt, config.json) into `out` and verify them."""
    from study.settings import require_existing_store, without_userinfo
    from trainables.artifacts import read_config, sha256_file

    name, alias, version = parse_reference(reference)
    require_existing_store(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        found = (client.get_model_version(name, version) if version
                 else client.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        raise InputError(f"{reference}: not found in the registry at {without_userinfo(tracking_uri)} "
                         f"({e.message})") from None
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vamp-pull-") as tmp:
        files = Path(client.download_artifacts(found.run_id, "model", tmp))
        for path in files.iterdir():
            path.replace(out / path.name)
    _, meta = read_config(out)  # the config too: a wrong one fails here, naming the file
    actual = sha256_file(out / "weights.pt")
    if actual != meta["weights_sha256"] or actual != found.tags.get("weights_sha256", actual):
        raise RuntimeError(f"{out}/weights.pt: sha256 {actual} does not match the registry's {meta['weights_sha256']}")
    return out
