"""Every model with every prior and likelihood: shapes, gradients, the once-per-input sharing
of the encoder, and the autoregressive decoder's ordering."""
import pytest
import torch

from trainables.config import TrainConfig
from trainables.models import MODELS, build_model
from tests.helpers import BINARY, GRAY, images, small
from trainables.priors import PRIORS

@pytest.mark.parametrize("spec", [BINARY, GRAY], ids=["bernoulli", "logistic"])
@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_loss_is_finite_and_reaches_every_parameter(model, prior, spec):
    m = small(model, prior, spec)
    x = images(spec, 8)
    loss, re, kl = m.loss(x, beta=0.3)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(re.item() + 0.3 * kl.item(), rel=1e-5)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("model", sorted(MODELS))
def test_draws_share_the_input_parts_exactly(model):
    """terms(x, S) is terms(x repeated S times, 1): parts of q that depend on x alone are computed
    once per input without changing the result."""
    m = small(model, "vampprior").eval()
    x = images(BINARY, 3)
    torch.manual_seed(5)
    shared = m.terms(x, samples=4)
    torch.manual_seed(5)
    repeated = m.terms(x.repeat_interleave(4, 0), samples=1)
    torch.testing.assert_close(shared.log_px.flatten(), repeated.log_px.flatten(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(shared.kl.flatten(), repeated.kl.flatten(), rtol=1e-5, atol=1e-4)


def test_pixelhvae_likelihood_of_a_pixel_ignores_later_pixels():
    m = small("pixelhvae", "standard").eval()
    x = images(BINARY, 1).requires_grad_(True)
    torch.manual_seed(0)
    posterior = m.encoder(x.detach(), 1)
    out = m.decoder.p_x._out(x, posterior.z)  # (1, P, D): parameters of each pixel
    for i in (0, 13, 400, 783):
        (grad,) = torch.autograd.grad(out[0, 0, i], x, retain_graph=True)
        assert torch.all(grad[0, i:] == 0), f"pixel {i} depends on pixels >= {i}"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_generation_and_reconstruction_are_images(model):
    m = small(model, "mog").eval()
    x = images(BINARY, 2)
    for out in (m.generate(2), m.reconstruct(x)):
        assert out.shape == (2, 784) and out.min() >= 0 and out.max() <= 1


def test_paper_network_sizes():
    """The paper's networks on MNIST: 300 hidden units, 40 latent units, the conv trunk's 6x7x7 output."""
    torch.manual_seed(0)
    m = build_model(TrainConfig(model="convhvae", prior="standard"), BINARY, images(BINARY, 4))
    assert m.encoder.q_z2[1].linear.in_features == 6 * 7 * 7
    assert m.encoder.q_z1_joint[1].linear.out_features == 2 * 40
    hv = build_model(TrainConfig(model="hvae", prior="vampprior", K=500), BINARY, images(BINARY, 4))
    assert hv.prior.pseudo_inputs.weight.shape == (500, 784)
    assert hv.encoder.q_z2[0].linear.out_features == 2 * 300
