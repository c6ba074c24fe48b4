"""One training step of this project's models next to the paper's own code, side by side.

    .venv/bin/python benchmarks/bench_original.py --original DIR [--models convhvae pixelhvae hvae]
                                                  [--threads 2 1] [--repeats 7] [--out docs/benchmarks.md]

DIR is a checkout of the paper's code (`git clone https://github.com/jmtomczak/vae_vampprior`);
it is imported, never copied into this project. The shims it needs on current torch/scipy are
applied here at import time: `scipy.misc.logsumexp` (gone from scipy) is provided from
`scipy.special`, and `DIR/models` is put on sys.path for the models' Python 2 style
`from Model import Model`; without matplotlib, `utils.visual_evaluation` (plots only) is
stubbed. Everything else runs as written (with deprecation warnings, silenced).

Both sides get the same step loop, the same batch (the first 100 static-MNIST training images
from the mirror), K = 500, beta = 0.5, the same thread count, and each its own model and optimizer:
ours `build_model` + `NormalizedAdam` as `Trainer` builds them; theirs `VAE(args)` +
`AdamNormGrad(lr=5e-4)`, as their `experiment.py` and `utils/training.py` run them. Steps are
interleaved (ours, theirs; the order alternates per repeat) and the table gives medians and the
ratio of medians, with the range of the per-repeat ratios.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import statistics
import sys
import time
import types
import warnings
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_speed import build, machine, wait_quiet  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables.train import Trainer  # noqa: E402

#: Our model name -> the paper's module (models/<name>.py) and its --model_name.
ORIGINAL_MODULES = {"hvae": "HVAE_2level", "convhvae": "convHVAE_2level", "pixelhvae": "PixelHVAE_2level"}
BEGIN, END = "<!-- bench_original:begin -->", "<!-- bench_original:end -->"
BETA = 0.5
#: The issue's target for the convolutional models: ours at most this times the paper's step.
TARGET_CONV_RATIO = 0.8


def import_original(directory: Path) -> dict[str, tuple[type, type]]:
    """The paper's VAE class of each model and its AdamNormGrad, from a checkout at `directory`."""
    directory = directory.resolve()
    if not (directory / "models" / "Model.py").is_file():
        raise SystemExit(f"{directory} is not a checkout of jmtomczak/vae_vampprior (no models/Model.py)")
    try:  # shim: scipy.misc.logsumexp moved to scipy.special (and scipy.misc is gone)
        from scipy.special import logsumexp
    except ImportError:  # the training step never calls it
        def logsumexp(*_a, **_k):
            raise NotImplementedError("scipy is not installed")
    misc = types.ModuleType("scipy.misc")
    misc.logsumexp = logsumexp
    sys.modules["scipy.misc"] = misc
    try:
        import scipy
        scipy.misc = misc
    except ImportError:
        pass
    for p in (directory / "models", directory):  # `from Model import Model` and `from utils...`
        sys.path.insert(0, str(p))
    try:  # utils/visual_evaluation imports matplotlib; the training step never plots
        importlib.import_module("utils.visual_evaluation")
    except ImportError:
        plots = types.ModuleType("utils.visual_evaluation")
        plots.plot_histogram = plots.plot_images = lambda *_a, **_k: None
        sys.modules["utils.visual_evaluation"] = plots
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    optimizer = importlib.import_module("utils.optimizer").AdamNormGrad
    return {ours: (importlib.import_module(f"models.{mod}").VAE, optimizer)
            for ours, mod in ORIGINAL_MODULES.items()}


def original_args(model: str, K: int) -> Namespace:
    """The arguments of the paper's experiment.py for static MNIST with the VampPrior."""
    return Namespace(model_name=ORIGINAL_MODULES[model], dataset_name="static_mnist", input_size=[1, 28, 28],
                     input_type="binary", dynamic_binarization=False, z1_size=40, z2_size=40,
                     prior="vampprior", number_components=K, pseudoinputs_mean=-0.05,
                     pseudoinputs_std=0.01, use_training_data_init=False, cuda=False, warmup=100, lr=5e-4)


def step_timer(loss_fn, optimizer):
    """One training step as both codes run it: zero the gradients, loss, backward, step."""
    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        loss.item()  # as the original's loop reads the loss back every step
        return time.perf_counter() - started
    return step


def compare(model: str, originals, splits, repeats: int, warmup: int) -> dict:
    """Interleaved step times of ours and theirs for one model (vampprior, K = 500)."""
    config, data, net = build(splits, model, "vampprior", torch.device("cpu"))
    x = data.train[:config.batch_size]
    trainer = Trainer(net, data, config)
    net.train()
    ours = step_timer(lambda: net.loss(x, BETA)[0], trainer.optimizer)

    cls, adam = originals[model]
    args = original_args(model, config.K)
    torch.manual_seed(0)
    theirs_net = cls(args)
    theirs_net.train()
    theirs_opt = adam(theirs_net.parameters(), lr=args.lr)
    theirs = step_timer(lambda: theirs_net.calculate_loss(x, BETA, average=True)[0], theirs_opt)

    for _ in range(warmup):
        ours(), theirs()
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    ratios = sorted(x / y for x, y in zip(a, b))
    return {"model": model, "threads": torch.get_num_threads(), "ours": statistics.median(a),
            "theirs": statistics.median(b),
            "ratio": statistics.median(a) / statistics.median(b), "ratio_lo": ratios[0],
            "ratio_hi": ratios[-1], "repeats": repeats,
            "params": (sum(p.numel() for p in net.parameters()),
                       sum(p.numel() for p in theirs_net.parameters()))}


def markdown(rows: list[dict], header: str, command: str) -> str:
    lines = [BEGIN, "", header, "", f"Command: `{command}`", "",
             "| model + vampprior | threads | ours s/step (median) | paper's code s/step (median) "
             "| ours / paper's | per-repeat ratios | target | parameters (ours, paper's) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-"
        if r["model"] != "hvae":
            target = f"<= {TARGET_CONV_RATIO}x: {'met' if r['ratio'] <= TARGET_CONV_RATIO else 'NOT met'}"
        lines.append(f"| {r['model']} | {r['threads']} | {r['ours']:.3f} | {r['theirs']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f} | {target} | {r['params'][0]:,} / {r['params'][1]:,} |")
    return "\n".join(lines + ["", END]) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", type=Path, required=True, metavar="DIR",
                   help="a checkout of github.com/jmtomczak/vae_vampprior")
    p.add_argument("--models", nargs="+", default=list(ORIGINAL_MODULES), choices=list(ORIGINAL_MODULES))
    p.add_argument("--repeats", type=int, default=7, help="timed steps per side (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="torch.set_num_threads; several: every model at each, in turn")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                   help="before each model, wait at most this long for idle CPUs (0: do not wait)")
    p.add_argument("--out", type=Path, help="write the table into this markdown file")
    args = p.parse_args(argv)

    mirror = ROOT.parent / "shared" / "datasets"
    if mirror.is_dir():
        os.environ.setdefault("STUDY_DATA_MIRROR", str(mirror))
    originals = import_original(args.original)
    splits = load_dataset("static_mnist")
    started, rows, busy = time.perf_counter(), [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for model in args.models:
            busy.append(wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0)
            rows.append(compare(model, originals, splits, args.repeats, args.warmup))
            r = rows[-1]
            print(f"{model}+vampprior, {threads} threads: ours {r['ours']:.3f} s, paper's {r['theirs']:.3f} s, "
                  f"ratio {r['ratio']:.2f} ({r['ratio_lo']:.2f}-{r['ratio_hi']:.2f})", file=sys.stderr, flush=True)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine_desc = machine(torch.device("cpu")).replace(
        f"torch.set_num_threads({torch.get_num_threads()})", "threads as in the table")
    header = (f"One training step, static MNIST, batch 100, K = 500, beta = {BETA} ({stamp}); "
              f"{machine_desc}; {args.repeats} interleaved steps per side after "
              f"{args.warmup} untimed; before each model the CPUs were {100 * min(busy):.0f}-"
              f"{100 * max(busy):.0f}% busy with other processes; took {time.perf_counter() - started:.0f} s.")
    text = markdown(rows, header, ".venv/bin/python benchmarks/bench_original.py "
                    + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.out:
        from bench_speed import write_markdown
        write_markdown(args.out, text, BEGIN, END)


if __name__ == "__main__":
    main()
