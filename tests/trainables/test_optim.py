"""The paper's optimizer: each of the paper's tensors normalised by its own gradient norm."""
import torch

from trainables.optim import NormalizedAdam, split_into


def _train(params, loss_fn, steps=3):
    opt = NormalizedAdam.for_model(params, lr=0.1) if isinstance(params, torch.nn.Module) \
        else NormalizedAdam(params, lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def test_normalized_adam_ignores_the_scale_of_gradients():
    """Each tensor's gradient is divided by its norm: scaling the loss changes nothing."""
    updates = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5, 3))
        _train([w], lambda: scale * (w**2).sum())
        updates.append(w.detach().clone())
    torch.testing.assert_close(updates[0], updates[1])


def test_a_fused_layer_trains_like_its_separate_pieces():
    """A linear layer of 2 x 4 outputs marked as two pieces takes the same steps as two
    separate 4-output layers (the paper's h and g), although the pieces' gradients differ in
    scale by 100x; unmarked, it does not."""
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    fused = torch.nn.Linear(3, 8)
    h, g = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    with torch.no_grad():
        h.weight.copy_(fused.weight[:4]), g.weight.copy_(fused.weight[4:])
        h.bias.copy_(fused.bias[:4]), g.bias.copy_(fused.bias[4:])
    unmarked = torch.nn.Linear(3, 8)
    unmarked.load_state_dict(fused.state_dict())
    split_into(fused, 2)

    def loss(a, b):
        return (a**2).sum() + 100 * (b**2).sum()

    _train(fused, lambda: loss(*fused(x).chunk(2, dim=1)))
    _train(list(h.parameters()) + list(g.parameters()), lambda: loss(h(x), g(x)))
    _train(unmarked, lambda: loss(*unmarked(x).chunk(2, dim=1)))
    torch.testing.assert_close(fused.weight, torch.cat([h.weight, g.weight]))
    torch.testing.assert_close(fused.bias, torch.cat([h.bias, g.bias]))
    assert not torch.allclose(unmarked.weight, fused.weight)


def test_the_pieces_survive_a_copy_and_a_resume():
    """The pieces are the layer's, not the tensor's: a deep copy keeps them, and they travel
    in the optimizer's state, so a resumed optimizer normalises the same way."""
    import copy

    layer = torch.nn.Linear(3, 8)
    split_into(layer, 2)
    copied = copy.deepcopy(layer)
    opt = NormalizedAdam.for_model(copied, lr=0.1)
    assert [g["pieces"] for g in opt.param_groups] == [2]
    resumed = NormalizedAdam.for_model(copy.deepcopy(layer), lr=0.1)
    resumed.load_state_dict(opt.state_dict())
    assert [g["pieces"] for g in resumed.param_groups] == [2]


def test_a_state_saved_in_one_group_loads_into_the_pieces_groups():
    """A checkpoint's optimizer state from before the groups followed the pieces (every
    parameter in one group, the model's order) resumes with each tensor's own moments."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 2))
    split_into(model[0], 2)
    x = torch.randn(5, 3)
    before = torch.optim.Adam(model.parameters(), lr=0.1)  # the old layout: one group
    model(x).square().sum().backward()
    before.step()
    resumed = NormalizedAdam.for_model(model, lr=0.1)
    resumed.load_state_dict(before.state_dict())
    assert [g["pieces"] for g in resumed.param_groups] == [1, 2]
    for p in model.parameters():
        torch.testing.assert_close(resumed.state[p]["exp_avg"], before.state[p]["exp_avg"])
    assert all(g["lr"] == 0.1 for g in resumed.param_groups)


def test_pieces_of_a_channels_last_gradient_and_a_shared_parameter():
    """A gradient in any memory layout splits into its pieces, and a parameter two layers share
    is optimised once."""
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    split_into(conv, 2)
    tied = torch.nn.Sequential(conv, torch.nn.Conv2d(4, 4, 1))
    tied[1].weight = torch.nn.Parameter(torch.randn(4, 4, 1, 1))
    tied.append(torch.nn.Conv2d(4, 4, 1))
    tied[2].weight = tied[1].weight
    opt = NormalizedAdam.for_model(tied, lr=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(tied.parameters()))
    tied(torch.randn(2, 3, 5, 5)).sum().backward()
    opt.step()


def test_a_one_group_state_keeps_this_models_pieces():
    """Loading a state saved with one group into an optimizer of one group keeps its pieces."""
    layer = torch.nn.Linear(3, 8)
    split_into(layer, 2)
    old = torch.optim.Adam(layer.parameters(), lr=0.1)
    opt = NormalizedAdam.for_model(layer, lr=0.1)
    opt.load_state_dict(old.state_dict())
    assert [g["pieces"] for g in opt.param_groups] == [2]
