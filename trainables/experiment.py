"""One trial without any orchestration: load the data, build the seeded model, train, score.
`study train`, `study score` and the Ray Tune trainable are all made of these pieces."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from trainables.config import TrainConfig
from trainables.data import DatasetSpec, load_dataset
from trainables.errors import InputError
from trainables.evaluate import evaluate
from trainables.models import Model, build_model
from trainables.train import DeviceData, Progress


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA where there is a GPU, else the CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


@dataclass
class Trial:
    """A seeded model with its data on the training device."""

    config: TrainConfig
    spec: DatasetSpec
    data: DeviceData
    model: Model
    device: torch.device


def prepare(config: TrainConfig, splits=None) -> Trial:
    """Load the dataset of `config` (unless `splits` are given: a Ray worker gets them from the
    object store), and build the model with the config's seed."""
    device = resolve_device(config.device)
    splits = load_dataset(config.dataset) if splits is None else splits
    data = DeviceData.from_splits(splits, config, device)
    torch.manual_seed(config.seed)
    model = build_model(config, splits.spec, data.train).to(device)
    return Trial(config, splits.spec, data, model, device)


def score(trial: Trial, samples: int | None = None) -> dict:
    """Test figures of the trial's current weights (IS log-likelihood with the config's seed)."""
    return evaluate(trial.model, trial.data.test, samples=samples or trial.config.samples,
                    seed=trial.config.seed)


def generations(model: Model) -> int:
    """How many images the figures generate: 16 where the decoder samples pixel by pixel (one
    pass of the decoder per pixel), else 64."""
    return 16 if model.autoregressive else 64


def summary(progress: Progress) -> dict:
    """Training figures of a finished run."""
    seconds = [h["epoch_seconds"] for h in progress.history]
    return {
        "val_loss": progress.best_val_loss,
        "best_epoch": progress.best_epoch,
        "epochs": progress.epoch,
        "stopped_early": progress.stopped_early,
        "seconds_per_epoch": statistics.median(seconds) if seconds else None,
    }
