"""The paper's optimizer: Adam on gradients normalised per parameter tensor (AdamNormGrad).

Our layers fuse tensors that the paper's code keeps apart (a gated unit's h and g, a Gaussian
head's mean and log-variance, the gray likelihood's two output maps) into one tensor with the
pieces stacked along its first dimension. Such a layer says so with `split_into(layer, n)`;
`NormalizedAdam.for_model` puts its tensors in a parameter group of `n` pieces, and the step
normalises each piece by its own norm: the same update as the paper's code.
"""
from __future__ import annotations

import torch
from torch import nn

#: Added to each gradient norm, as in the paper's code.
NORM_EPS = 1e-7


def split_into(layer: nn.Module, pieces: int) -> None:
    """Mark `layer`'s own tensors (weight, bias) as `pieces` tensors of the paper's code, stacked
    along dimension 0: each piece gets its own gradient norm."""
    layer.normalised_pieces = pieces


def _pieces(grad: torch.Tensor, pieces: int) -> list[torch.Tensor]:
    """Views of `grad` (whatever its memory layout), one per tensor of the paper's code."""
    return [grad] if pieces == 1 else list(grad.chunk(pieces, dim=0))


class NormalizedAdam(torch.optim.Adam):
    """Adam whose gradients are first divided by their L2 norm (+1e-7), one norm per tensor of
    the paper's code, as its AdamNormGrad does. A parameter group's `pieces` (default 1) says
    how many of the paper's tensors each of its tensors stacks."""

    @classmethod
    def for_model(cls, model: nn.Module, **options) -> "NormalizedAdam":
        """The optimizer of every parameter of `model`, grouped by the pieces their layer declares."""
        groups: dict[int, list[nn.Parameter]] = {}
        seen: set[int] = set()  # a parameter shared by two layers is optimised once
        for layer in model.modules():
            pieces = getattr(layer, "normalised_pieces", 1)
            for param in layer.parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    groups.setdefault(pieces, []).append(param)
        optimizer = cls([{"params": params, "pieces": pieces}
                         for pieces, params in sorted(groups.items()) if params], **options)
        position = {id(p): i for i, p in enumerate(model.parameters())}
        optimizer._model_positions = [position[id(p)] for g in optimizer.param_groups for p in g["params"]]
        return optimizer

    def load_state_dict(self, state_dict: dict) -> None:
        """Also takes the state of an optimizer that held every parameter in one group, in the
        model's order (checkpoints written before the groups followed the pieces). The pieces
        describe the model, not the saved run: each group keeps its own."""
        positions = getattr(self, "_model_positions", None)
        if len(state_dict["param_groups"]) == 1 < len(self.param_groups) and positions is not None:
            state_dict = self._regrouped(state_dict, positions)
        pieces = [group.get("pieces", 1) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, n in zip(self.param_groups, pieces):
            group["pieces"] = n

    def _regrouped(self, state_dict: dict, positions: list[int]) -> dict:
        (old,) = state_dict["param_groups"]
        options = {key: value for key, value in old.items() if key != "params"}
        state, groups, index = {}, [], 0
        for group in self.param_groups:
            ids = list(range(index, index + len(group["params"])))
            for i in ids:
                saved_id = old["params"][positions[i]]
                if saved_id in state_dict["state"]:
                    state[i] = state_dict["state"][saved_id]
            groups.append({**options, "pieces": group["pieces"], "params": ids})
            index += len(ids)
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def step(self, closure=None):
        views = [view for group in self.param_groups for p in group["params"] if p.grad is not None
                 for view in _pieces(p.grad, group.get("pieces", 1))]
        if views:
            norms = torch._foreach_add(torch._foreach_norm(views), NORM_EPS)
            torch._foreach_div_(views, norms)
        return super().step(closure)
