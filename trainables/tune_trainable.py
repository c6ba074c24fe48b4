"""The Ray Tune side of a trial: the only module of `trainables` that imports Ray.

`train_trial` is a Tune function trainable. Its config holds what the search chose for the trial
(`SEARCHED_FIELDS`: model, prior, lr, K, seed), and optionally `checkpoint`, the URI of a
checkpoint to continue from (a trial resumed by a later `study resume`). The study's constants
and the dataset come through `tune.with_parameters`: they stay out of the trial's config (and so
out of trial names and tracked params), and the dataset reaches workers on any node through
Ray's object store, with no shared disk.

It reports once per epoch with a checkpoint of the whole training state (so a restored trial
continues exactly), and says in its last result why it stopped by itself (`stop_reason`):
`early_stopping` (the paper's patience), `max_epochs`, or `diverged` (the loss became NaN or
infinite: a result, reported without a checkpoint, not an error to retry).

`evaluate_checkpoint` scores a trial's best weights on the test set and returns the files of the
saved model and its figures as bytes, so that it can run as a Ray task on any node.

Every upload and download of a checkpoint rides out an outage of the storage (`patiently`): a
trial that met a restarting S3 server with its checkpoint would otherwise fail, and Tune's retry,
which comes at once, would fail the same way until the trial's retries were spent. An upload is
not retried itself (Tune's report counts the checkpoint before it uploads it): the trial waits
until the storage answers, then reports once.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import ray
import torch
from ray import tune

from trainables import patience
from trainables.artifacts import save_weights
from trainables.config import SEARCHED_FIELDS, TrainConfig
from trainables.experiment import generations, prepare, score
from trainables.figures import save_figures
from trainables.train import DIVERGED, ENDED_BY_ITSELF, Diverged, Trainer

CHECKPOINT_FILE = "checkpoint.pt"

#: How long a checkpoint's upload or download waits for its storage to come back.
STORAGE_OUTAGE_SECONDS = 120.0


#: What a storage's error says when it did not answer (pyarrow's S3 errors carry the AWS SDK's
#: error names), as opposed to refusing (AccessDenied, NoSuchBucket) or a local disk's error.
UNANSWERED = re.compile(r"NETWORK_CONNECTION|SERVICE_UNAVAILABLE|SLOW_DOWN|INTERNAL_FAILURE|REQUEST_TIMEOUT|"
                        r"Could not connect|Connection refused|timed out|HTTP response code 5\d\d")


def _unanswered(error: Exception) -> bool:
    """A remote storage's error (no errno: not a local disk's) that says it did not answer."""
    return isinstance(error, OSError) and error.errno is None and bool(UNANSWERED.search(str(error)))


def patiently(what: str, call):
    """``call()``, made again while the storage does not answer (see UNANSWERED), after 1 s,
    doubling up to 15 s, for up to STORAGE_OUTAGE_SECONDS; then its error is raised. Any other
    error is raised at once."""
    def waiting(error: Exception, pause: float) -> None:
        print(f"{what}: the storage did not answer ({str(error)[:300]}); again in {pause:g} s", file=sys.stderr,
              flush=True)

    return patience.patiently(call, unanswered=_unanswered, seconds=STORAGE_OUTAGE_SECONDS, first=1.0, longest=15.0,
                              waiting=waiting)


def trial_config(base: dict, sampled: dict) -> TrainConfig:
    """The TrainConfig of a trial: the study's fixed settings plus what the search chose."""
    return TrainConfig.from_dict({**base, **{k: sampled[k] for k in SEARCHED_FIELDS if k in sampled}})


def stop_reason(trainer: Trainer) -> str:
    """Why the trainer stopped by itself ('' while it goes on)."""
    p = trainer.progress
    if p.stopped_early:
        return "early_stopping"
    return "max_epochs" if p.epoch >= trainer.config.epochs else ""


def _last_metrics(trainer: Trainer) -> dict:
    return dict(trainer.progress.history[-1]) if trainer.progress.history else {"epoch": 0}


def _report(values: dict, trainer: Trainer, checkpoint: bool = True) -> None:
    values = {**values, "node_id": ray.get_runtime_context().get_node_id()}
    values.setdefault("stop_reason", stop_reason(trainer) if trainer.finished else "")
    if not checkpoint:
        tune.report(values)
        return
    with tempfile.TemporaryDirectory(prefix="vamp-ckpt-") as folder:
        trainer.save(Path(folder) / CHECKPOINT_FILE)
        storage = tune.get_context().get_storage()
        patiently(f"checkpoint of epoch {values.get('epoch')}",
                  lambda: storage.storage_filesystem.get_file_info(storage.experiment_fs_path))
        tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(sampled: dict, *, base: dict, splits) -> None:
    """One trial: train with the paper's schedule, report every epoch, stop early by itself
    (patience), at max epochs, on divergence, or when the study's early stopping says so.
    `splits` may be an ObjectRef: one copy serves every trial."""
    trial = prepare(trial_config(base, sampled), _resolve(splits))
    trainer = Trainer(trial.model, trial.data, trial.config)
    checkpoint = tune.get_checkpoint()  # Tune's own retry after a fault, in this run of the study
    if checkpoint is None and sampled.get("checkpoint"):
        checkpoint = tune.Checkpoint(sampled["checkpoint"])  # a trial resumed by `study resume`
    restored: dict = {}
    if checkpoint is not None:
        trainer.load_state(_training_state(checkpoint, trainer.data.train.device))
        # the epochs before the checkpoint, once (as JSON: Tune's loggers leave a string alone), so
        # that the driver logs those it has not logged yet
        restored = {"restored_history": json.dumps(trainer.progress.history)}
        if trainer.finished:  # it had ended just before the study was interrupted: do not train again
            _report({**_last_metrics(trainer), **restored}, trainer, checkpoint=False)
            return

    def on_epoch(metrics, t: Trainer) -> None:
        _report({**asdict(metrics), **restored}, t)
        restored.clear()

    try:
        trainer.fit(on_epoch)
    except Diverged as e:
        _report({**_last_metrics(trainer), **restored, "stop_reason": DIVERGED, "diverged": str(e)}, trainer,
                checkpoint=False)


def _resolve(splits):
    return ray.get(splits) if isinstance(splits, ray.ObjectRef) else splits


def _as_checkpoint(checkpoint: tune.Checkpoint | str) -> tune.Checkpoint:
    return tune.Checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    """Where a checkpoint lies, as a URI that `tune.Checkpoint(uri)` opens on any node."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def _training_state(checkpoint: tune.Checkpoint | str, device="cpu") -> dict:
    """The training state a trial's checkpoint holds (see Trainer.save)."""
    def read() -> dict:
        with _as_checkpoint(checkpoint).as_directory() as folder:
            return torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)
    return patiently(f"checkpoint {checkpoint_uri(_as_checkpoint(checkpoint))}", read)


def best_weights(checkpoint: tune.Checkpoint | str, device="cpu") -> dict:
    """The best weights (a state dict) a trial's checkpoint holds."""
    return _training_state(checkpoint, device)["best_model"]


def checkpoint_history(checkpoint: tune.Checkpoint | str) -> list[dict]:
    """The per-epoch metrics a trial's checkpoint holds (every epoch up to it)."""
    return list(_training_state(checkpoint)["progress"]["history"])


def save_trial_model(config: TrainConfig, checkpoint: tune.Checkpoint | str, folder: Path) -> Path:
    """The trial's best weights and config as a saved model folder (see trainables.artifacts)."""
    return save_weights(best_weights(checkpoint), config, folder)


def evaluate_checkpoint(config: TrainConfig, splits, checkpoint: tune.Checkpoint | str, title: str) -> dict:
    """Test figures of a trial's best weights, and its figures as bytes:
    {"metrics": {...}, "files": {"figures/generations.png": b"...", ...}}."""
    trial = prepare(config, _resolve(splits))
    trial.model.load_state_dict(best_weights(checkpoint, trial.device))
    scores = score(trial)
    per_example = scores.pop("per_example_ll")
    scores["test_size"] = int(trial.data.test.shape[0])
    scores["train_size"] = int(trial.data.train.shape[0])
    with tempfile.TemporaryDirectory(prefix="vamp-eval-") as tmp:
        folder = Path(tmp)
        save_figures(trial.model, trial.data.test, per_example, trial.spec.shape, folder / "figures",
                     title=title, generations=generations(trial.model))
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return {"metrics": scores, "files": files}


__all__ = ["CHECKPOINT_FILE", "DIVERGED", "ENDED_BY_ITSELF", "best_weights", "checkpoint_history", "checkpoint_uri",
           "evaluate_checkpoint", "save_trial_model", "stop_reason", "train_trial", "trial_config"]
