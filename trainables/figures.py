"""The paper's figures of a trained model, as PNG files: generations, reconstructions, the
pseudo-inputs of a VampPrior, and the histogram of per-example test log-likelihoods."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from trainables.models import Model  # noqa: E402
from trainables.priors import VampPrior  # noqa: E402


def image_grid(images: Tensor, shape: tuple[int, int, int], columns: int = 8) -> np.ndarray:
    """Tile flat images (N, C*H*W) into one (rows*H, columns*W) array with 1-pixel gaps."""
    c, h, w = shape
    x = images.detach().float().cpu().numpy().reshape(-1, c, h, w)[:, 0]
    rows = -(-x.shape[0] // columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1), dtype=np.float32)
    for i, img in enumerate(x):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = img
    return grid


def _save_grid(path: Path, images: Tensor, shape, title: str, columns: int = 8) -> Path:
    fig, ax = plt.subplots(figsize=(columns * 0.9, max(1.0, -(-images.shape[0] // columns) * 0.9) + 0.4))
    ax.imshow(image_grid(images, shape, columns), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def save_figures(model: Model, test: Tensor, per_example_ll: Tensor, shape, folder: Path,
                 *, title: str, generations: int = 64) -> list[Path]:
    """Write the figures into `folder` and return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = [
        _save_grid(folder / "generations.png", model.generate(generations), shape, f"{title}: generations"),
    ]
    originals = test[:32]
    pairs = torch.stack([originals, model.reconstruct(originals)], dim=1).flatten(0, 1)
    paths.append(_save_grid(folder / "reconstructions.png", pairs, shape,
                            f"{title}: test images and reconstructions (pairs)"))
    if isinstance(model.prior, VampPrior):
        paths.append(_save_grid(folder / "pseudo_inputs.png", model.prior.pseudo_inputs()[:64], shape,
                                f"{title}: pseudo-inputs"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(per_example_ll.cpu().numpy(), bins=50, color="tab:blue")
    ax.set_xlabel("test log-likelihood per example (nats)")
    ax.set_ylabel("examples")
    ax.set_title(f"{title}: mean {float(per_example_ll.mean()):.2f}", fontsize=9)
    fig.savefig(folder / "ll_histogram.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    paths.append(folder / "ll_histogram.png")
    return paths
