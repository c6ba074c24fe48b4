"""Assemble a Model from a TrainConfig and a dataset: the one place names become modules."""
from __future__ import annotations

import torch
from torch import Tensor

from trainables.config import TrainConfig
from trainables.layers import paper_init
from trainables.likelihoods import LIKELIHOODS
from trainables.models.model import Model
from trainables.models.networks import MODELS, Sizes
from trainables.priors import PRIORS, PriorInputs

#: Noise added to training images used as initial (learnable) pseudo-inputs, as in the paper's
#: code: without it, pixels at exactly 0 or 1 would sit where the hardtanh has no gradient.
DATA_INIT_NOISE = 0.01


def _random_images(train: Tensor, k: int) -> Tensor:
    index = torch.randperm(train.shape[0])[:k] if k <= train.shape[0] else torch.randint(train.shape[0], (k,))
    return train[index.to(train.device)].clone()


def build_model(config: TrainConfig, spec, train: Tensor) -> Model:
    """Build the model `config` names for dataset `spec` (its shape, likelihood and pseudo-input
    statistics). `train` holds the training images, used where the prior draws from them.
    Uses the global torch RNG: seed it first for a reproducible model."""
    likelihood = LIKELIHOODS[spec.likelihood]
    parts = MODELS[config.model](tuple(spec.shape), likelihood,
                                 Sizes(hidden=config.hidden, z1=config.z1_size, z2=config.z2_size))
    paper_init(parts.encoder)
    paper_init(parts.decoder)
    dim = train.shape[1]

    def pseudo_inputs() -> Tensor:
        if config.pseudoinputs == "data":
            return _random_images(train, config.K) + DATA_INIT_NOISE * torch.randn(config.K, dim, device=train.device)
        return spec.pseudoinput_mean + spec.pseudoinput_std * torch.randn(config.K, dim, device=train.device)

    prior = PRIORS[config.prior](PriorInputs(
        latent_dim=parts.top_dim, K=config.K, posterior=parts.encoder.top,
        pseudo_inputs=pseudo_inputs, training_images=lambda: _random_images(train, config.K)))
    return Model(parts.encoder, parts.decoder, prior)
