"""The log densities against independent computations (float64, scipy)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from trainables.distributions import (
    log_bernoulli_logits,
    log_discretized_logistic,
    log_normal_diag,
    log_normal_mixture,
    log_standard_normal,
    sample_discretized_logistic,
)


def test_log_normal_diag_matches_scipy():
    g = torch.Generator().manual_seed(0)
    z, mean = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    logvar = torch.rand(5, 7, generator=g) * 4 - 3
    expected = stats.norm(mean.numpy(), np.exp(0.5 * logvar.numpy())).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(log_normal_diag(z, mean, logvar).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(log_standard_normal(z).numpy(), stats.norm().logpdf(z.numpy()).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("logvar_range", [(-6.0, 2.0), (-6.0, -5.0), (0.0, 2.0)])
def test_log_normal_mixture_matches_direct_float64(logvar_range):
    """The matrix-product form against sum_k w_k prod_d N(z_d; mu_kd, s_kd) in float64."""
    g = torch.Generator().manual_seed(1)
    N, K, D = 64, 50, 40
    z = torch.randn(N, D, generator=g) * 1.5
    means = torch.randn(K, D, generator=g)
    low, high = logvar_range
    logvars = low + (high - low) * torch.rand(K, D, generator=g)
    log_w = torch.log_softmax(torch.randn(K, generator=g), 0)

    z64, m64, v64, w64 = (t.double().numpy() for t in (z, means, logvars, log_w))
    comp = stats.norm(m64[None], np.exp(0.5 * v64[None])).logpdf(z64[:, None, :]).sum(-1)  # (N, K)
    expected = logsumexp(comp + w64[None], axis=1)

    got = log_normal_mixture(z, means, logvars, log_w).double().numpy()
    # float32 arithmetic on values of order |expected| ~ 1e2..1e4: relative error ~1e-6
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-3)


def test_log_bernoulli_logits_is_exact():
    logits = torch.tensor([[-30.0, -2.0, 0.0, 3.0, 40.0]])
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    l = logits.double().numpy()
    log_p, log_not_p = -np.logaddexp(0, -l), -np.logaddexp(0, l)  # log sigmoid(l), log(1 - sigmoid(l))
    expected = (x.numpy() * log_p + (1 - x.numpy()) * log_not_p).sum(-1)
    np.testing.assert_allclose(log_bernoulli_logits(x, logits).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("mean,logscale", [(0.5, -2.0), (0.02, -4.5), (0.98, -4.5), (0.3, 0.0), (0.0, -3.0)])
def test_discretized_logistic_sums_to_one_over_256_bins(mean, logscale):
    centres = (torch.arange(256, dtype=torch.float32) + 0.5) / 256
    x = centres[:, None]  # each bin as one one-pixel image
    logp = log_discretized_logistic(x, torch.full_like(x, mean), torch.full_like(x, logscale))
    assert torch.isfinite(logp).all()
    assert math.isclose(float(torch.logsumexp(logp.double(), 0).exp()), 1.0, abs_tol=1e-5)


def test_discretized_logistic_matches_cdf_differences():
    """Interior bins: F((k+1)/256) - F(k/256) of the logistic, computed by scipy in float64."""
    mean, logscale = 0.4, -3.0
    k = torch.tensor([1, 50, 102, 103, 200, 254], dtype=torch.float32)
    x = ((k + 0.5) / 256)[:, None]
    logp = log_discretized_logistic(x, torch.full_like(x, mean), torch.full_like(x, logscale)).double().numpy()
    dist = stats.logistic(loc=mean, scale=math.exp(logscale))
    expected = np.log(dist.cdf((k.numpy() + 1) / 256) - dist.cdf(k.numpy() / 256))
    np.testing.assert_allclose(logp, expected, rtol=1e-4)
    # the edge bins carry the tails
    edges = torch.tensor([[0.5 / 256], [255.5 / 256]])
    p_edges = log_discretized_logistic(edges, torch.full_like(edges, mean), torch.full_like(edges, logscale)).exp()
    np.testing.assert_allclose(p_edges.double().numpy(), [dist.cdf(1 / 256), dist.sf(255 / 256)], rtol=1e-4)


def test_discretized_logistic_far_tail_is_finite():
    x = torch.tensor([[200.5 / 256]])
    logp = log_discretized_logistic(x, torch.tensor([[0.01]]), torch.tensor([[-4.5]]))
    assert torch.isfinite(logp).all() and logp.item() < -50


def test_discretized_logistic_samples_follow_the_distribution():
    torch.manual_seed(0)
    n = 200_000
    mean, logscale = torch.full((n, 1), 0.3), torch.full((n, 1), -3.0)
    draws = sample_discretized_logistic(mean, logscale)
    bins = torch.floor(draws * 256).long().flatten()
    counts = torch.bincount(bins, minlength=256).double() / bins.numel()
    x = ((torch.arange(256) + 0.5) / 256)[:, None]
    probs = log_discretized_logistic(x, torch.full_like(x, 0.3), torch.full_like(x, -3.0)).exp().double()
    # L1 distance of an empirical histogram: about sum_k sqrt(2 p_k / (pi n)) ~ 0.018 by chance
    assert float((counts - probs).abs().sum()) < 0.04
    assert abs(float(draws.mean()) - float((probs * x.flatten().double()).sum())) < 1e-3


def test_log_bernoulli_shares_one_image_across_its_draws():
    """(N, 1, D) images against (N, S, D) logits, as in the IS estimate, equals draw by draw."""
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((3, 1, 50), 0.3), generator=g)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    shared = log_bernoulli_logits(x, logits)
    one_by_one = torch.stack([log_bernoulli_logits(x[:, 0], logits[:, s]) for s in range(7)], dim=1)
    torch.testing.assert_close(shared, one_by_one, rtol=1e-6, atol=1e-4)


def test_gray_likelihood_clamps_its_mean_to_the_outer_bin_centres():
    """The paper's code clamps the logistic's mean sigmoid(a) to [1/512, 1 - 1/512]: an output
    far in either tail gives the centre of the first or last bin, not 0 or 1."""
    from trainables.likelihoods import LIKELIHOODS

    gray = LIKELIHOODS["logistic"]
    out = torch.tensor([[[-40.0, 0.0, 40.0], [-1.0, -1.0, -1.0]]])  # (N=1, P=2, D=3)
    assert gray.mean(out)[0].tolist() == pytest.approx([1 / 512, 0.5, 1 - 1 / 512])
    x = torch.tensor([[0.0, 0.5, 1.0]])
    clamped = torch.tensor([[1 / 512, 0.5, 1 - 1 / 512]])
    expected = log_discretized_logistic(x, clamped, torch.full((1, 3), -1.0))
    assert torch.allclose(gray.log_prob(x, out), expected)


def test_binary_likelihood_is_the_papers_clamped_bernoulli():
    """log Bern(x; clamp(sigmoid(l), 1e-5, 1 - 1e-5)) as the paper's code computes it, in float64:
    the same values, and no gradient for outputs beyond the clamp."""
    from trainables.likelihoods import LIKELIHOODS

    binary = LIKELIHOODS["bernoulli"]
    logits = torch.tensor([[-30.0, -11.0, 0.3, 11.0, 30.0]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    probs = torch.sigmoid(logits).clamp(1e-5, 1 - 1e-5)
    original = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)
    ours = binary.log_prob(x, logits.unsqueeze(1))
    torch.testing.assert_close(ours, original)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    assert grad[0, 0] == 0 and grad[0, 4] == 0 and (grad[0, 1:4] != 0).all()
