"""One configuration object for a training run (plain data, validated once at the edge)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from trainables.errors import InputError

#: Priors that are mixtures with K components (the only ones for which K means anything).
MIXTURE_PRIORS = frozenset({"mog", "vampprior", "vampprior_data", "vampprior_weighted"})

#: The fields a study's search chooses per trial; a study holds the others fixed.
SEARCHED_FIELDS = ("model", "prior", "lr", "K", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one trial. Defaults are the paper's settings (Sec. 4)."""

    dataset: str = "static_mnist"
    model: str = "vae"
    prior: str = "standard"
    K: int = 500  # pseudo-inputs / mixture components
    lr: float = 5e-4
    epochs: int = 2000
    warmup: int = 100  # KL warm-up epochs: beta = epoch / warmup
    patience: int = 50  # early stopping: epochs without validation improvement
    batch_size: int = 100
    seed: int = 0
    z1_size: int = 40  # latent units of the lower (or only) layer
    z2_size: int = 40  # latent units of the top layer of two-level models
    hidden: int = 300  # units of the gated dense layers
    pseudoinputs: str = "random"  # "random": N(mean, std) per dataset; "data": training images
    train_limit: int | None = None  # use the first N training images
    test_limit: int | None = None  # use the first N test images
    samples: int = 5000  # importance samples for the test log-likelihood
    device: str = "auto"

    def validate(self) -> "TrainConfig":
        """Check the fields that registries do not check; raise InputError naming the field."""
        from trainables.data import DATASETS
        from trainables.models import MODELS
        from trainables.priors import PRIORS

        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("prior", self.prior, PRIORS)
        _choice("pseudoinputs", self.pseudoinputs, ("random", "data"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        for name in ("K", "epochs", "batch_size", "z1_size", "z2_size", "hidden", "samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{_flag(name)} must be an integer >= 1, got {getattr(self, name)}")
        for name in ("warmup", "patience"):
            if getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)} must be an integer >= 0, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{_flag(name)} must be an integer >= 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive finite number, got {self.lr}")
        return self

    @property
    def mixture(self) -> bool:
        return self.prior in MIXTURE_PRIORS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise InputError(f"--{_flag(name)} {value!r} is not known; allowed: {', '.join(sorted(allowed))}")
