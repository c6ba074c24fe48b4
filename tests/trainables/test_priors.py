"""Priors: densities against a direct float64 mixture, sampling, pseudo-inputs, frozen()."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch import nn

from trainables.priors import (
    PRIORS,
    MixtureOfGaussians,
    PriorInputs,
    PseudoInputs,
    StandardNormal,
    VampPrior,
)

D_X, D_Z, K = 12, 4, 7


class CountingEncoder(nn.Module):
    """A small q(z|x) that counts how often it is called."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(D_X, 2 * D_Z)
        self.calls = 0

    def top(self, x):
        self.calls += 1
        mean, logvar = self.net(x).chunk(2, -1)
        return mean, torch.tanh(logvar)


def direct_mixture_log_density(z, means, logvars, log_weights):
    z, m, v, w = (t.detach().double().numpy() for t in (z, means, logvars, log_weights))
    comp = stats.norm(m[None], np.exp(0.5 * v[None])).logpdf(z[:, None]).sum(-1)
    return logsumexp(comp + w[None], axis=1)


def test_vampprior_is_the_mean_of_posteriors_at_pseudo_inputs():
    """Eq. (9), computed independently: 1/K sum_k N(z; mu(u_k), sigma^2(u_k)) in float64."""
    torch.manual_seed(0)
    encoder = CountingEncoder()
    u = torch.rand(K, D_X)
    prior = VampPrior(D_Z, PseudoInputs(u), encoder.top)
    z = torch.randn(30, D_Z)
    mean, logvar = encoder.top(u)
    expected = direct_mixture_log_density(z, mean, logvar, torch.full((K,), -math.log(K)))
    np.testing.assert_allclose(prior.log_prob(z).double().detach().numpy(), expected, rtol=1e-5)


def test_weighted_vampprior_uses_softmax_weights():
    torch.manual_seed(1)
    encoder = CountingEncoder()
    prior = VampPrior(D_Z, PseudoInputs(torch.rand(K, D_X)), encoder.top, weighted=True)
    with torch.no_grad():
        prior.weight_logits.copy_(torch.randn(K))
    z = torch.randn(30, D_Z)
    mean, logvar = encoder.top(prior.pseudo_inputs())
    expected = direct_mixture_log_density(z, mean, logvar, torch.log_softmax(prior.weight_logits, 0))
    np.testing.assert_allclose(prior.log_prob(z).double().detach().numpy(), expected, rtol=1e-5)


def test_mog_density_matches_direct_mixture_and_clips_logvars():
    torch.manual_seed(2)
    prior = MixtureOfGaussians(D_Z, K)
    with torch.no_grad():
        prior.logvars.copy_(torch.randn(K, D_Z) * 5)  # some beyond the clip range [-6, 2]
    z = torch.randn(30, D_Z)
    expected = direct_mixture_log_density(z, prior.means, prior.logvars.clamp(-6, 2), torch.full((K,), -math.log(K)))
    np.testing.assert_allclose(prior.log_prob(z).double().detach().numpy(), expected, rtol=1e-5)


def test_standard_normal():
    z = torch.randn(10, D_Z)
    expected = stats.norm().logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(StandardNormal(D_Z).log_prob(z).numpy(), expected, rtol=1e-6)


def test_mixture_density_integrates_to_one_in_one_dimension():
    torch.manual_seed(3)
    prior = MixtureOfGaussians(1, 5)
    grid = torch.linspace(-15, 15, 60001)[:, None]
    density = prior.log_prob(grid).exp().detach().double()
    assert math.isclose(float(torch.trapezoid(density, grid.flatten().double())), 1.0, rel_tol=1e-4)


def test_pseudo_inputs_are_clipped_to_unit_interval_and_fixed_ones_are_buffers():
    u = PseudoInputs(torch.tensor([[-0.5, 0.2, 1.7]]))
    assert u().tolist() == [[0.0, pytest.approx(0.2), 1.0]]
    fixed = PseudoInputs(torch.rand(3, 2), learnable=False)
    assert list(fixed.parameters()) == [] and "weight" in fixed.state_dict()


def test_frozen_computes_components_once_and_blocks_gradients():
    encoder = CountingEncoder()
    prior = VampPrior(D_Z, PseudoInputs(torch.rand(K, D_X)), encoder.top)
    with prior.frozen():
        for _ in range(5):
            lp = prior.log_prob(torch.randn(3, D_Z))
    assert encoder.calls == 1
    assert not lp.requires_grad
    prior.log_prob(torch.randn(3, D_Z))
    assert encoder.calls == 2  # outside the block, components follow the parameters again


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_samples_where_its_density_is(name):
    torch.manual_seed(4)
    encoder = CountingEncoder()
    inputs = PriorInputs(latent_dim=D_Z, K=K, posterior=encoder.top,
                         pseudo_inputs=lambda: torch.rand(K, D_X), training_images=lambda: torch.rand(K, D_X))
    prior = PRIORS[name](inputs).requires_grad_(False)
    encoder.requires_grad_(False)
    z = prior.sample(4000)
    assert z.shape == (4000, D_Z)
    # samples from p have a higher average log p than samples from a broad alternative
    broad = torch.randn(4000, D_Z) * 5
    assert prior.log_prob(z).mean() > prior.log_prob(broad).mean()
    # and their average log p estimates -entropy: compare with a fresh independent draw
    z2 = prior.sample(4000)
    assert abs(float(prior.log_prob(z).mean() - prior.log_prob(z2).mean())) < 0.2


def test_vampprior_data_keeps_training_images_fixed():
    encoder = CountingEncoder()
    images = torch.rand(K, D_X)
    prior = PRIORS["vampprior_data"](PriorInputs(D_Z, K, encoder.top, lambda: torch.zeros(K, D_X), lambda: images))
    assert torch.equal(prior.pseudo_inputs(), images)
    assert all(p is not prior.pseudo_inputs.weight for p in prior.parameters())
