"""Models by name, and `build_model`, which assembles Model(encoder, decoder, prior)."""
from trainables.models.build import build_model
from trainables.models.model import Model, Posterior, Terms
from trainables.models.networks import MODELS, Parts, Sizes

__all__ = ["MODELS", "Model", "Parts", "Posterior", "Sizes", "Terms", "build_model"]
