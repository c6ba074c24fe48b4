"""Every model with every prior and likelihood: shapes, gradients, the once-per-input sharing
of the encoder, and the autoregressive decoder's ordering."""
import pytest
import torch

from trainables.config import TrainConfig
from trainables.layers import GatedConv2d, GatedDense, GaussianHead
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


#: Parameters of the paper's published code (github jmtomczak/vae_vampprior), counted with K = 500:
#: (standard, vampprior) per model, on static MNIST (1x28x28, binary) and Frey Faces (1x28x20, gray).
ORIGINAL_PARAMETERS = {
    ("static_mnist", "vae"): (1_116_864, 1_508_864),
    ("static_mnist", "hvae"): (2_431_024, 2_823_024),
    ("static_mnist", "convhvae"): (2_210_861, 2_602_861),
    ("static_mnist", "pixelhvae"): (1_385_821, 1_777_821),
    ("freyfaces", "vae"): (1_083_600, 1_363_600),
    ("freyfaces", "hvae"): (2_263_360, 2_543_360),
    ("freyfaces", "convhvae"): (1_827_270, 2_107_270),
    ("freyfaces", "pixelhvae"): (1_234_740, 1_514_740),
}
SPECS = {"static_mnist": BINARY, "freyfaces": GRAY}


@pytest.mark.parametrize("dataset, model", sorted(ORIGINAL_PARAMETERS))
def test_parameter_counts_equal_the_original(dataset, model):
    spec = SPECS[dataset]
    counts = []
    for prior in ("standard", "vampprior"):
        torch.manual_seed(0)
        m = build_model(TrainConfig(model=model, prior=prior, K=500), spec, images(spec, 4))
        counts.append(sum(p.numel() for p in m.parameters()))
    assert tuple(counts) == ORIGINAL_PARAMETERS[dataset, model]


def _paper_layers(module: torch.nn.Module):
    """The layers as the paper's code names them: gated units and Gaussian heads whole, and
    every other module that holds parameters of its own (convolutions, linear maps, batch norm)."""
    for child in module.children():
        if isinstance(child, (GatedDense, GatedConv2d, GaussianHead)) or (
                not list(child.children()) and list(child.parameters(recurse=False))):
            yield child
        else:
            yield from _paper_layers(child)


def _original_layer_shapes(model: str, shape: tuple[int, int, int], n_params: int) -> list[tuple]:
    """Each layer's output shape (without the batch) in the order our forward pass runs them,
    written from the original's layer definitions: gated dense layers of 300 units, 40 latent
    units (a Gaussian head's mean), the conv trunk 32, 32/2, 64, 64/2, 6 channels, the
    decoders' output (one value per pixel and likelihood parameter)."""
    c, h, w = shape
    d = c * h * w
    h2, w2 = -(-h // 2), -(-w // 2)
    h4, w4 = -(-h2 // 2), -(-w2 // 2)
    trunk = [(32, h, w), (32, h2, w2), (64, h2, w2), (64, h4, w4), (6, h4, w4)]
    p_z1 = [(300,), (300,), (40,)]
    conv_encoder = [*trunk, (40,), *trunk, (6 * h4 * w4,), (300,), (40,)]
    return {
        "vae": [(300,), (300,), (40,), (300,), (300,), (n_params * d,)],
        "hvae": [(300,), (300,), (40,), (300,), (300,), (300,), (40,),
                 (300,), (300,), (300,), (n_params * d,), *p_z1],
        "convhvae": [*conv_encoder, (300,), (300,), (d,), *[(64, h, w)] * 4, (n_params * c, h, w), *p_z1],
        "pixelhvae": [*conv_encoder, (d,), (d,), *[(64, h, w)] * 16, (n_params * c, h, w), *p_z1],
    }[model]


@pytest.mark.parametrize("spec", [BINARY, GRAY], ids=["static_mnist", "freyfaces"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_layer_has_the_original_output_shape(model, spec):
    torch.manual_seed(0)
    m = build_model(TrainConfig(model=model, prior="standard"), spec, images(spec, 4))
    seen = []
    for layer in _paper_layers(m):
        layer.register_forward_hook(
            lambda _, __, out: seen.append(tuple((out[0] if isinstance(out, tuple) else out).shape)))
    m.loss(images(spec, 3))
    n_params = 2 if spec is GRAY else 1
    assert seen == [(3, *s) for s in _original_layer_shapes(model, spec.shape, n_params)]


def test_vampprior_pseudo_inputs_are_k_images():
    torch.manual_seed(0)
    hv = build_model(TrainConfig(model="hvae", prior="vampprior", K=500), BINARY, images(BINARY, 4))
    assert hv.prior.pseudo_inputs.weight.shape == (500, 784)


# ---------------------------------------------------------------- memory layout of the conv models


@pytest.mark.parametrize("model", ["convhvae", "pixelhvae"])
def test_convolutions_run_channels_last_and_parameters_stay_contiguous(model):
    """The conv stacks run on channels-last activations (layers.ChannelsLast); the parameters and
    their gradients stay contiguous, which the optimizer's per-piece views and fused Adam (one
    layout for parameter, gradient and moments) rely on."""
    from trainables.layers import MaskedConv2d

    m = small(model, "vampprior")
    outputs = []
    for layer in m.modules():
        if isinstance(layer, (GatedConv2d, MaskedConv2d)):
            layer.register_forward_hook(lambda _, __, out: outputs.append(out))
    m.loss(images(BINARY, 3))[0].backward()
    assert outputs and all(o.is_contiguous(memory_format=torch.channels_last) for o in outputs)
    for name, p in m.named_parameters():
        assert p.is_contiguous() and p.grad.is_contiguous(), name


@pytest.mark.parametrize("model", ["convhvae", "pixelhvae"])
def test_conv_training_steps_are_reproducible_for_a_seed(model):
    from trainables.optim import NormalizedAdam

    def train():
        m = small(model, "vampprior")
        opt = NormalizedAdam.for_model(m, lr=1e-3)
        torch.manual_seed(3)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            m.loss(images(BINARY, 5), beta=0.5)[0].backward()
            opt.step()
        return [p.detach().clone() for p in m.parameters()]

    for a, b in zip(train(), train()):
        assert torch.equal(a, b)
