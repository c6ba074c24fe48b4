"""Where one training step's time goes: torch.profiler's per-operator self CPU time.

    .venv/bin/python benchmarks/profile_step.py [--models convhvae pixelhvae hvae] [--steps 3]
                                                [--original DIR]

For each model (with the VampPrior, K = 500, batch 100 of static MNIST, 2 threads) it runs the
step `Trainer._train_epoch` runs (loss, zero_grad, backward, the optimizer's step) a few times
untimed, then profiles `--steps` steps and prints the operators with the largest self CPU time,
per step, with their share of the profiled time. Autograd's backward nodes show as
`autograd::engine::evaluate_function: ...Backward0`; their children (e.g. `aten::convolution_backward`)
carry the self time. With `--original DIR` (a checkout of the paper's code, see
bench_original.py) the paper's step of the same model is profiled after ours.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench_speed import build  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables.train import Trainer  # noqa: E402


def our_step(splits, model: str, prior: str):
    """One training step of ours, as Trainer._train_epoch runs it."""
    config, data, net = build(splits, model, prior, torch.device("cpu"))
    trainer = Trainer(net, data, config)
    x = data.train[:config.batch_size]
    net.train()

    def step():
        loss = net.loss(x, 0.5)[0]
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    return step


def original_step(splits, model: str, directory: Path):
    """One training step of the paper's code (vampprior, K = 500), as its train_vae runs it."""
    from bench_original import import_original, original_args
    cls, adam = import_original(directory)[model]
    args = original_args(model, 500)
    torch.manual_seed(0)
    net = cls(args)
    net.train()
    optimizer = adam(net.parameters(), lr=args.lr)
    x = torch.as_tensor(splits.train[:100], dtype=torch.float32)

    def step():
        optimizer.zero_grad()
        loss = net.calculate_loss(x, 0.5, average=True)[0]
        loss.backward()
        optimizer.step()
    return step


def profile_model(step, name: str, steps: int, warmup: int, top: int) -> str:
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    lines = [f"{name}: {total / 1e3 / steps:.1f} ms self CPU per step ({steps} steps)",
             f"{'operator':<58} {'ms/step':>8} {'share':>6} {'calls/step':>10}"]
    for e in events[:top]:
        lines.append(f"{e.key[:58]:<58} {e.self_cpu_time_total / 1e3 / steps:8.1f} "
                     f"{100 * e.self_cpu_time_total / total:5.1f}% {e.count / steps:10.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["convhvae", "pixelhvae", "hvae"])
    p.add_argument("--prior", default="vampprior")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--original", type=Path, metavar="DIR", help="also profile the paper's code at DIR")
    args = p.parse_args(argv)
    mirror = ROOT.parent / "shared" / "datasets"
    if mirror.is_dir():
        os.environ.setdefault("STUDY_DATA_MIRROR", str(mirror))
    torch.set_num_threads(args.threads)
    splits = load_dataset("static_mnist")
    for model in args.models:
        steps = args.steps if model not in ("vae", "hvae") else 10 * args.steps
        runs = [(f"{model}+{args.prior}", lambda: our_step(splits, model, args.prior))]
        if args.original is not None and args.prior == "vampprior":
            runs.append((f"{model}+vampprior, paper's code", lambda: original_step(splits, model, args.original)))
        for name, make in runs:
            print(profile_model(make(), name, steps, args.warmup, args.top), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
