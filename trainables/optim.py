"""The paper's optimizer: Adam on gradients normalised per parameter tensor."""
from __future__ import annotations

import torch


class NormalizedAdam(torch.optim.Adam):
    """Adam whose every parameter tensor's gradient is first divided by its L2 norm (+1e-7),
    as the paper's AdamNormGrad does."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if grads:
                norms = torch._foreach_add(torch._foreach_norm(grads), 1e-7)
                torch._foreach_div_(grads, norms)
        return super().step(closure)
