"""Champions and the MLflow Model Registry.

For each (model, prior) group the trial with the lowest validation loss is the champion: its
best weights are scored on the test set (importance-sampled LL with the spec's S, ELBO, active
units, bits/dim for gray data) by a Ray task with the trial's resources, logged to its run with
figures, and registered as a new version of `<dataset>-<model>-<prior>`. The registered files
are `weights.pt` (tensors only) and `config.json`; loading them never unpickles code. The alias
`champion` moves to the new version only if its test LL beats the current champion's.
Registration is idempotent: a run that already has a version is not registered again.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from study.runner import base_config
from trainables.config import TrainConfig
from trainables.errors import InputError
from trainables.tune_trainable import evaluate_checkpoint, trial_config

ALIAS = "champion"


@dataclass
class Champion:
    model: str
    prior: str
    trial_id: str
    config: TrainConfig
    best_val_loss: float
    checkpoint: object  # ray.tune.Checkpoint

    @property
    def registered_name(self) -> str:
        return f"{self.config.dataset}-{self.model}-{self.prior}"


def champions(study) -> list[Champion]:
    """The trial with the lowest validation loss in each (model, prior) group that has one."""
    best: dict[tuple[str, str], Champion] = {}
    for model, grid in study.results.items():
        base = base_config(study.spec, model)
        for result in grid:
            loss = (result.metrics or {}).get("best_val_loss")
            if result.error is not None or result.checkpoint is None or loss is None:
                continue
            config = trial_config(base, result.config)
            key = (model, config.prior)
            if key not in best or loss < best[key].best_val_loss:
                best[key] = Champion(model, config.prior, result.metrics["trial_id"], config, loss, result.checkpoint)
    return [best[k] for k in sorted(best)]


def register_champions(study, log) -> list[dict]:
    """Score and register every group's champion; returns one summary row per group."""
    spec, tracker = study.spec, study.tracker
    client = tracker.client
    todo = [c for c in champions(study) if not _versions_of(client, tracker, c)]
    evaluate = ray.remote(evaluate_checkpoint).options(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus)
    pending = {evaluate.remote(c.config, study.splits_ref, c.checkpoint, f"{c.registered_name} ({c.trial_id})"): c
               for c in todo}
    for ref, champion in pending.items():
        log(f"scoring the champion of {champion.model}+{champion.prior} ({champion.trial_id}) on the test set")
        _register(client, tracker, champion, ray.get(ref))
    return [_summary(client, tracker, c) for c in champions(study)]


def _run_id(tracker, champion: Champion) -> str:
    run = tracker.run_of_trial(champion.trial_id)
    if run is None:
        raise RuntimeError(f"no MLflow run for trial {champion.trial_id}")
    return run.info.run_id


def _versions_of(client: MlflowClient, tracker, champion: Champion) -> list:
    return list(client.search_model_versions(f"run_id = '{_run_id(tracker, champion)}'"))


def _register(client: MlflowClient, tracker, champion: Champion, evaluation: dict) -> None:
    run_id = _run_id(tracker, champion)
    metrics = evaluation["metrics"]
    values = {"test_ll": metrics["test_ll"], "test_elbo": metrics["test_elbo"]}
    for layer, units in enumerate(metrics["active_units"], start=1):
        values[f"active_units_z{layer}"] = units
    if "bits_per_dim" in metrics:
        values["bits_per_dim"] = metrics["bits_per_dim"]
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()],
                     tags=[RunTag("vamp.champion", "true")])
    if not any(a.path == "model" for a in client.list_artifacts(run_id)):  # logged when the trial ended
        tracker.log_model(run_id, champion.config, champion.checkpoint)
    with tempfile.TemporaryDirectory(prefix="vamp-register-") as tmp:
        for relative, data in evaluation["files"].items():
            path = Path(tmp) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        client.log_artifacts(run_id, tmp)
        config = Path(client.download_artifacts(run_id, "model/config.json", tmp))
        sha256 = json.loads(config.read_text())["weights_sha256"]
    name = champion.registered_name
    try:
        client.create_registered_model(name, description=f"{champion.model} with the {champion.prior} prior "
                                       f"on {champion.config.dataset} (VampPrior paper models)")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    tags = {"study": tracker.study, "trial_id": champion.trial_id, "weights_sha256": sha256,
            "val_loss": f"{champion.best_val_loss:.6f}", **{k: f"{v:.6f}" for k, v in values.items()}}
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    current = _champion_version(client, name)
    if current is None or float(current.tags.get("test_ll", "-inf")) < values["test_ll"]:
        client.set_registered_model_alias(name, ALIAS, version.version)


def _champion_version(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def _summary(client: MlflowClient, tracker, champion: Champion) -> dict:
    versions = _versions_of(client, tracker, champion)
    tags = versions[0].tags if versions else {}
    current = _champion_version(client, champion.registered_name)
    return {"name": champion.registered_name, "trial": champion.trial_id, "val_loss": champion.best_val_loss,
            "test_ll": float(tags["test_ll"]) if "test_ll" in tags else None,
            "version": versions[0].version if versions else None,
            "champion_version": current.version if current else None}


MODEL_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?$")


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """NAME, NAME@ALIAS or NAME/VERSION (optionally as models:/...) -> (name, alias, version);
    with neither, the alias is `champion`."""
    match = MODEL_REF.match(reference.removeprefix("models:/"))
    if not match:
        raise InputError(f"{reference!r} is not a registered model reference; use NAME, NAME@ALIAS or NAME/VERSION")
    return match["name"], None if match["version"] else (match["alias"] or ALIAS), match["version"]


def pull(reference: str, out: Path, tracking_uri: str) -> Path:
    """Download a registered model's files (weights.pt, config.json) into `out` and verify them."""
    from trainables.artifacts import read_config, sha256_file

    name, alias, version = parse_reference(reference)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        found = (client.get_model_version(name, version) if version
                 else client.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        raise InputError(f"{reference}: not found in the registry at {tracking_uri} ({e.message})") from None
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vamp-pull-") as tmp:
        files = Path(client.download_artifacts(found.run_id, "model", tmp))
        for path in files.iterdir():
            path.replace(out / path.name)
    meta = read_config(out)
    actual = sha256_file(out / "weights.pt")
    if actual != meta["weights_sha256"] or actual != found.tags.get("weights_sha256", actual):
        raise RuntimeError(f"{out}/weights.pt: sha256 {actual} does not match the registry's {meta['weights_sha256']}")
    return out
