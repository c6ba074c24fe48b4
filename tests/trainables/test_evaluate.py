"""Importance-sampled log-likelihood, ELBO, active units, bits per dimension."""
import math

import pytest
import torch
from torch import nn

from trainables.evaluate import active_units, bits_per_dim, elbo, evaluate, log_likelihood
from trainables.models.encoders import OneLevelEncoder
from trainables.models.model import Model
from trainables.priors import StandardNormal
from tests.helpers import BINARY, GRAY, images, small


@pytest.fixture(scope="module", params=["vae", "hvae"])
def model_and_data(request):
    m = small(request.param, "vampprior").eval()
    return m, images(BINARY, 300, seed=3)


def standard_error(t):
    return float(t.std() / math.sqrt(t.numel()))


def test_is_estimate_is_above_the_elbo_and_grows_with_samples(model_and_data):
    m, x = model_and_data
    torch.manual_seed(0)
    bound = elbo(m, x)
    lls = {s: log_likelihood(m, x, samples=s) for s in (1, 10, 100)}
    assert lls[100].mean() > lls[10].mean() > lls[1].mean()
    assert lls[10].mean() >= bound.mean()
    # per example, a 100-sample estimate almost always beats a single draw's ELBO
    assert (lls[100] >= bound).float().mean() > 0.95


def test_one_sample_is_estimate_is_an_unbiased_elbo(model_and_data):
    m, x = model_and_data
    torch.manual_seed(1)
    one = torch.cat([log_likelihood(m, x, samples=1) for _ in range(20)])
    torch.manual_seed(2)
    bound = torch.cat([elbo(m, x) for _ in range(20)])
    gap = float(one.mean() - bound.mean())
    assert abs(gap) < 4 * math.hypot(standard_error(one), standard_error(bound))


def test_draws_split_across_passes_give_the_same_estimate(model_and_data):
    m, x = model_and_data
    torch.manual_seed(3)
    one_pass = log_likelihood(m, x[:50], samples=400, rows=400)
    torch.manual_seed(4)
    four_passes = log_likelihood(m, x[:50], samples=400, rows=100)
    assert abs(float(one_pass.mean() - four_passes.mean())) < 0.05 * abs(float(one_pass.mean())) / 10


def test_evaluate_is_reproducible_with_a_seed(model_and_data):
    m, x = model_and_data
    a = evaluate(m, x[:20], samples=50, seed=7)
    b = evaluate(m, x[:20], samples=50, seed=7)
    assert a["test_ll"] == b["test_ll"] and a["test_elbo"] == b["test_elbo"]
    assert a["test_ll"] >= a["test_elbo"] and "bits_per_dim" not in a


def test_gray_models_report_bits_per_dim():
    m = small("vae", "standard", GRAY).eval()
    x = images(GRAY, 10)
    r = evaluate(m, x, samples=20, seed=0)
    assert r["bits_per_dim"] == pytest.approx(-r["test_ll"] / (560 * math.log(2)))


def test_bits_per_dim():
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(1.0)


class LinearMeans(nn.Module):
    """q(z|x) whose mean is x @ W: unit u varies over the data as much as column u of W lets it."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        mean = x @ self.weight
        return mean, torch.zeros_like(mean)


def test_active_units_on_a_constructed_encoder():
    torch.manual_seed(0)
    x = torch.randn(5000, 3)  # unit variance per input dimension
    # Var(E[z_u]) = sum_i W_iu^2: 1.0, 0.04, 0.0081 (< 0.01), 0 and 0.25
    weight = torch.tensor([[1.0, 0.2, 0.09, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 0.3],
                           [0.0, 0.0, 0.0, 0.0, 0.4]])
    model = Model(OneLevelEncoder(LinearMeans(weight)), nn.Identity(), StandardNormal(5))
    assert active_units(model, x) == [3]
    assert active_units(model, x, threshold=0.001) == [4]
