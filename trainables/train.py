"""Training as in the paper: batches of 100, Adam with normalised gradients, KL warm-up
(beta = epoch / warmup), validation with beta = 1, early stopping that keeps the best weights.

The data stay on the training device; within an epoch nothing waits for the device, and the
losses are read back once per epoch. A checkpoint holds everything a run depends on (weights,
optimizer, best weights, counters, RNG states), so a resumed run repeats exactly what an
uninterrupted one would have done.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from trainables.config import TrainConfig
from trainables.models import Model
from trainables.optim import NormalizedAdam

EVAL_BATCH = 1000  # validation batch; results do not depend on it (no batch statistics in eval)


#: Why a run stopped by itself; only the first two make a trial a candidate champion.
ENDED_BY_ITSELF = ("early_stopping", "max_epochs")
DIVERGED = "diverged"


class Diverged(RuntimeError):
    """The training or validation loss became NaN or infinite."""


@dataclass
class DeviceData:
    """Training, validation and test images on the training device, flat (N, D)."""

    train: Tensor
    val: Tensor
    test: Tensor
    dynamic: bool  # binarize training images afresh at every epoch

    @classmethod
    def from_splits(cls, splits, config: TrainConfig, device: torch.device) -> "DeviceData":
        """The first `train_limit` training images, and `test_limit` test images drawn with a
        fixed seed (see `test_subset`)."""
        def put(a):
            return torch.as_tensor(a).to(device=device, dtype=torch.float32)

        return cls(put(splits.train[:config.train_limit]), put(splits.val),
                   put(test_subset(splits.test, config.test_limit)), splits.spec.dynamic)


#: Seed of the test subset behind --test-limit: one subset for every run, so that runs compare.
TEST_SUBSET_SEED = 20180409


def test_subset(test, limit: int | None):
    """`limit` test images chosen by a fixed-seed permutation (all of them, in file order, when
    limit is None). Not the first ones: the static-MNIST test file is sorted by digit."""
    if limit is None or limit >= len(test):
        return test
    order = np.random.default_rng(TEST_SUBSET_SEED).permutation(len(test))[:limit]
    return test[np.sort(order)]


@dataclass
class EpochMetrics:
    """What one epoch reports (per-example means; `val_*` with beta = 1)."""

    epoch: int
    beta: float
    train_loss: float
    train_re: float
    train_kl: float
    val_loss: float
    val_re: float
    val_kl: float
    epoch_seconds: float
    best_val_loss: float
    best_epoch: int


@dataclass
class Progress:
    """Counters of a run; part of every checkpoint."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)

    def record(self, epoch: int, val_loss: float, *, warmup: int, patience: int) -> bool:
        """Count epoch `epoch` with its validation loss; True if it is the best so far. As in
        the paper's code, epochs within the warm-up do not count towards patience; after more
        than `patience` epochs without improvement the run has stopped early (patience 0: never)."""
        self.epoch = epoch
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, epoch
        self.epochs_without_improvement = 0 if improved or epoch < warmup else self.epochs_without_improvement + 1
        self.stopped_early = self.stopped_early or self.out_of_patience(patience)
        return improved

    def out_of_patience(self, patience: int) -> bool:
        """More than `patience` epochs without improvement have passed, as the paper's code
        counts (`e > early_stopping_epochs`: with patience 50 it stops at the 51st); never for
        patience 0."""
        return patience > 0 and self.epochs_without_improvement > patience

    def finished(self, epochs: int) -> bool:
        """Done after `epochs` epochs, or after stopping early. Reading it changes nothing."""
        return self.stopped_early or self.epoch >= epochs


def kl_weight(epoch: int, warmup: int) -> float:
    """beta of the KL term at `epoch` (1-based): epoch / warmup, at most 1 (Bowman et al. 2016)."""
    return 1.0 if warmup == 0 else min(1.0, epoch / warmup)


class Trainer:
    """Runs the paper's training of one model on one dataset."""

    def __init__(self, model: Model, data: DeviceData, config: TrainConfig):
        self.model = model
        self.data = data
        self.config = config
        params = list(model.parameters())
        self.optimizer = NormalizedAdam.for_model(model, lr=config.lr, fused=_fused_adam_supported(params))
        self.progress = Progress()
        self.best_state = _copy_state(model)

    # -- one epoch ---------------------------------------------------------------------
    def _train_epoch(self, beta: float) -> tuple[float, float, float]:
        self.model.train()
        train, size = self.data.train, self.config.batch_size
        order = torch.randperm(train.shape[0], device=train.device)
        sums = torch.zeros(3, device=train.device)
        for start in range(0, train.shape[0], size):
            x = train[order[start:start + size]]
            if self.data.dynamic:
                x = torch.bernoulli(x)
            loss, re, kl = self.model.loss(x, beta)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums += torch.stack([loss.detach(), re.detach(), kl.detach()]) * x.shape[0]
        return tuple((sums / train.shape[0]).tolist())

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float]:
        """Loss, reconstruction error and KL on the validation set, beta = 1."""
        self.model.eval()
        val = self.data.val
        sums = torch.zeros(3, device=val.device)
        with self.model.prior.frozen():
            for start in range(0, val.shape[0], EVAL_BATCH):
                x = val[start:start + EVAL_BATCH]
                sums += torch.stack(self.model.loss(x, 1.0)) * x.shape[0]
        return tuple((sums / val.shape[0]).tolist())

    def epoch(self) -> EpochMetrics:
        """Train one epoch, validate, update the early-stopping counters."""
        p, c = self.progress, self.config
        epoch = p.epoch + 1
        beta = kl_weight(epoch, c.warmup)
        started = time.perf_counter()
        train_loss, train_re, train_kl = self._train_epoch(beta)
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss is {train_loss} at epoch {epoch} (lr={c.lr})")
        val_loss, val_re, val_kl = self.validate()
        if not math.isfinite(val_loss):
            raise Diverged(f"validation loss is {val_loss} at epoch {epoch} (lr={c.lr})")
        seconds = time.perf_counter() - started
        if p.record(epoch, val_loss, warmup=c.warmup, patience=c.patience):
            self.best_state = _copy_state(self.model)
        metrics = EpochMetrics(epoch, beta, train_loss, train_re, train_kl, val_loss, val_re, val_kl,
                               seconds, p.best_val_loss, p.best_epoch)
        p.history.append(asdict(metrics))
        return metrics

    @property
    def finished(self) -> bool:
        """The run is over: `epochs` epochs, or early stopping (a pure read of the counters)."""
        return self.progress.finished(self.config.epochs)

    def fit(self, on_epoch: Callable[[EpochMetrics, "Trainer"], None] | None = None) -> Progress:
        """Train until `epochs` or early stopping, then load the best weights into the model.
        `on_epoch(metrics, trainer)` runs after every epoch (it may save a checkpoint)."""
        while not self.finished:
            metrics = self.epoch()
            if on_epoch is not None:
                on_epoch(metrics, self)
        self.model.load_state_dict(self.best_state)
        return self.progress

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write a checkpoint atomically (tensors and plain data only: loads with weights_only)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_state,
            "progress": asdict(self.progress),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Continue from a checkpoint written by `save`."""
        self.load_state(torch.load(path, map_location=self.data.train.device, weights_only=True))

    def load_state(self, state: dict) -> None:
        """Continue from the training state a checkpoint holds (see `save`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_state = state["best_model"]
        progress = Progress(**state["progress"])
        # stopped early by the counters and this run's patience: a larger patience (or 0) given on
        # resuming continues a run that had stopped; an old checkpoint without the flag is read right
        progress.stopped_early = progress.out_of_patience(self.config.patience)
        self.progress = progress
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])


def _fused_adam_supported(params: list[Tensor]) -> bool:
    """Adam's fused kernel (one pass over each tensor instead of a dozen elementwise ops: the
    step on the CPU takes about a third of the time) runs on CPU and CUDA floating-point tensors.
    It computes the same update as the default implementation."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                for p in params)


def _copy_state(model: Model) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
