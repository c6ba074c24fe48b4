"""Champions and the MLflow Model Registry.

A group's champion is its trial with the lowest validation loss among those that *ended by
themselves* (the paper's patience, or max epochs): a trial stopped by the early stopping never
trained to the end, and a diverged one has no result to claim. Its best weights are scored on
the test set (importance-sampled LL with the spec's S, ELBO, active units, bits/dim for gray
data) by a Ray task with the trial's resources, logged to its run with figures, and registered
as a new version of `<dataset>-<model>-<prior>`. The registered files are `weights.pt` (tensors
only) and `config.json`; loading them never unpickles code. Registration is idempotent: a run
that already has a version is not registered again.

Every version carries its evaluation protocol as tags (`protocol.samples`, `protocol.test_size`,
`protocol.train_size`, and `protocol`: `full` for S >= 5000 on the whole test set after training
on the whole training set, else `reduced`), and the trial's `epochs`, `best_epoch` and
`stop_reason`. Test log-likelihoods compare only under one protocol, so the alias `champion`
(see `takes_alias`) moves to a new version only if it has the holder's protocol and a better
test LL, or if it is full and the holder is not: a quickstart never takes the alias from a
paper-protocol version.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from study import search
from study.protocol import Protocol, takes_alias
from study.pull import ALIAS
from trainables.config import TrainConfig
from trainables.train import ENDED_BY_ITSELF
from trainables.tune_trainable import evaluate_checkpoint

@dataclass
class Champion:
    group: search.Group
    number: int
    key: str
    config: TrainConfig
    best_val_loss: float
    epochs: int
    best_epoch: int
    stop_reason: str
    checkpoint: str  # URI

    @property
    def registered_name(self) -> str:
        return f"{self.config.dataset}-{self.group.model}-{self.group.prior}"


def champions(ledger) -> list[Champion]:
    """The champion of each group whose trials have all ended (see the module docstring)."""
    found = []
    for group in ledger.groups:
        if not ledger.complete(group):
            continue
        candidates = [t for t in ledger.trials(group) if t.user_attrs.get("stop_reason") in ENDED_BY_ITSELF
                      and t.value is not None and math.isfinite(t.value) and t.user_attrs.get("checkpoint")]
        if not candidates:
            continue
        best = min(candidates, key=lambda t: (t.value, t.number))
        attrs = best.user_attrs
        config = search.trial_config(ledger.spec, group, best.params, search.trial_seed(ledger.spec, group, best.number))
        found.append(Champion(group, best.number, group.trial_key(best.number), config, best.value,
                              int(attrs.get("epochs", 0)), int(attrs.get("best_epoch", 0)), attrs["stop_reason"],
                              attrs["checkpoint"]))
    return found


def register_champions(study, log) -> list[dict]:
    """Score and register every complete group's champion; one summary row per champion."""
    client, tracker = study.tracker.client, study.tracker
    found = champions(study.ledger)
    todo, versions = [], {}
    for champion in found:
        registered = _versions_of(client, tracker, champion)
        if not registered:
            todo.append(champion)
        else:  # registered by a run that was cut before it placed the alias: place it now
            versions[champion.key] = registered[0]
            _place_alias(client, champion.registered_name, registered[0])
    pending = {}
    for c in todo:
        resources = study.spec.resources.of(c.group.model)
        evaluate = ray.remote(evaluate_checkpoint).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
        pending[evaluate.remote(c.config, study.splits_ref, c.checkpoint, f"{c.registered_name} ({c.key})")] = c
    for ref, champion in pending.items():
        log(f"scoring the champion of {champion.group.label} ({champion.key}) on the test set")
        versions[champion.key] = _register(client, tracker, champion, ray.get(ref))
    return [_summary(client, c, versions.get(c.key)) for c in found]


def _run_id(tracker, champion: Champion) -> str:
    run = tracker.run_of_trial(champion.key)
    if run is None:
        raise RuntimeError(f"no MLflow run for trial {champion.key}")
    return run.info.run_id


def _versions_of(client: MlflowClient, tracker, champion: Champion) -> list:
    return list(client.search_model_versions(f"run_id = '{_run_id(tracker, champion)}'"))


def _register(client: MlflowClient, tracker, champion: Champion, evaluation: dict):
    """Log the champion's test metrics and files to its run and register it; the new version."""
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
        client.create_registered_model(name, description=f"{champion.group.model} with the {champion.group.prior} "
                                       f"prior on {champion.config.dataset} (VampPrior paper models)")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    protocol = Protocol.of(champion.config.dataset, champion.config.samples, metrics["test_size"],
                           metrics["train_size"])
    tags = {"study": tracker.study, "trial_id": champion.key, "weights_sha256": sha256,
            "val_loss": f"{champion.best_val_loss:.6f}", "epochs": str(champion.epochs),
            "best_epoch": str(champion.best_epoch), "stop_reason": champion.stop_reason, **protocol.tags(),
            **{k: f"{v:.6f}" for k, v in values.items()}}
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    _place_alias(client, name, version)
    return version


def _place_alias(client: MlflowClient, name: str, version) -> None:
    """Give `version` the alias if it takes it from the version that holds it (`takes_alias`)."""
    holder = _champion_version(client, name)
    if holder is not None and holder.version == version.version:
        return
    if takes_alias(Protocol.from_tags(version.tags) or Protocol(0, 0, 0, False), float(version.tags["test_ll"]),
                   None if holder is None else Protocol.from_tags(holder.tags),
                   None if holder is None else _float(holder.tags.get("test_ll")), held=holder is not None):
        client.set_registered_model_alias(name, ALIAS, version.version)


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _champion_version(client: MlflowClient, name: str):
    """The version that holds the alias, or None; any other failure of the registry is raised
    (a server that does not answer must not read as 'nobody holds it')."""
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _summary(client: MlflowClient, champion: Champion, version) -> dict:
    """One row of the champion table: the champion, its registered `version` and the alias holder."""
    tags = version.tags if version is not None else {}
    current = _champion_version(client, champion.registered_name)
    return {"name": champion.registered_name, "trial": champion.key, "val_loss": champion.best_val_loss,
            "epochs": champion.epochs, "stop_reason": champion.stop_reason,
            "test_ll": float(tags["test_ll"]) if "test_ll" in tags else None, "protocol": tags.get("protocol"),
            "version": version.version if version is not None else None,
            "champion_version": current.version if current else None}
