"""The Ray Tune side of a trial: the only module of `trainables` that imports Ray.

`train_trial` is a Tune function trainable. It reports once per epoch with a checkpoint (the
whole training state, so a restored trial continues exactly), and takes the study's constants
and the dataset through `tune.with_parameters`: they stay out of the trial's config (and so out
of trial names and tracked params), and the dataset reaches workers on any node through Ray's
object store, with no shared disk.

`evaluate_checkpoint` scores a trial's best weights on the test set and returns the files of the
saved model and its figures as bytes, so that it can run as a Ray task on any node.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.artifacts import save_weights
from trainables.config import TrainConfig
from trainables.experiment import prepare, score
from trainables.figures import save_figures
from trainables.train import EpochMetrics, Trainer

CHECKPOINT_FILE = "checkpoint.pt"


def trial_config(base: dict, sampled: dict) -> TrainConfig:
    """The TrainConfig of a trial: the study's fixed settings plus what the search chose
    (`prior`, `lr`, and `K_<prior>` for priors with components)."""
    prior = sampled["prior"]
    chosen = {"prior": prior, "lr": float(sampled["lr"])}
    if f"K_{prior}" in sampled:
        chosen["K"] = int(sampled[f"K_{prior}"])
    return TrainConfig.from_dict({**base, **chosen})


def stop_reason(trainer: Trainer) -> str:
    """Why the trainer stopped by itself ('' while it goes on)."""
    p = trainer.progress
    if p.stopped_early:
        return "early_stopping"
    return "max_epochs" if p.epoch >= trainer.config.epochs else ""


def _report(metrics: EpochMetrics | dict, trainer: Trainer, checkpoint: bool = True) -> None:
    finished = trainer.finished  # also marks an early stop
    values = {**(asdict(metrics) if isinstance(metrics, EpochMetrics) else metrics),
              "stop_reason": stop_reason(trainer) if finished else "",
              "node_id": ray.get_runtime_context().get_node_id()}
    if not checkpoint:
        tune.report(values)
        return
    with tempfile.TemporaryDirectory(prefix="vamp-ckpt-") as folder:
        trainer.save(Path(folder) / CHECKPOINT_FILE)
        tune.report(values, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(sampled: dict, *, base: dict, splits) -> None:
    """One trial: train with the paper's schedule, report every epoch, stop early by itself
    (patience) or when ASHA says so. `splits` may be an ObjectRef: one copy serves every model."""
    trial = prepare(trial_config(base, sampled), _resolve(splits))
    trainer = Trainer(trial.model, trial.data, trial.config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
        if trainer.finished:  # it had ended just before the study was interrupted: do not train again
            _report(trainer.progress.history[-1], trainer, checkpoint=False)
            return
    trainer.fit(lambda metrics, t: _report(metrics, t))


def _resolve(splits):
    return ray.get(splits) if isinstance(splits, ray.ObjectRef) else splits


def best_weights(checkpoint: tune.Checkpoint, device="cpu") -> dict:
    """The best weights (a state dict) a trial's checkpoint holds."""
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)
    return state["best_model"]


def save_trial_model(config: TrainConfig, checkpoint: tune.Checkpoint, folder: Path) -> Path:
    """The trial's best weights and config as a saved model folder (see trainables.artifacts)."""
    return save_weights(best_weights(checkpoint), config, folder)


def evaluate_checkpoint(config: TrainConfig, splits, checkpoint: tune.Checkpoint, title: str) -> dict:
    """Test figures of a trial's best weights, and its figures as bytes:
    {"metrics": {...}, "files": {"figures/generations.png": b"...", ...}}."""
    trial = prepare(config, _resolve(splits))
    trial.model.load_state_dict(best_weights(checkpoint, trial.device))
    scores = score(trial)
    per_example = scores.pop("per_example_ll")
    with tempfile.TemporaryDirectory(prefix="vamp-eval-") as tmp:
        folder = Path(tmp)
        save_figures(trial.model, trial.data.test, per_example, trial.spec.shape, folder / "figures",
                     title=title, generations=16 if config.model == "pixelhvae" else 64)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return {"metrics": scores, "files": files}


__all__ = ["CHECKPOINT_FILE", "best_weights", "evaluate_checkpoint", "save_trial_model", "stop_reason",
           "train_trial", "trial_config"]
