"""How long Tune's control loop waits for MLflow: the tracking callback's hooks against a real
MLflow tracking server on 127.0.0.1 (SQLite backend store, artifacts proxied to a local folder).

    .venv/bin/python benchmarks/bench_tracking.py [--repeats 7] [--out docs/benchmarks.md]

Tune calls a callback's hooks in its control loop: while a hook runs, no trial is started,
stopped or given its next result. The trial's end is the heavy one: the best weights of the trial
are read from its checkpoint and uploaded as the run's model (hvae + VampPrior, K = 500: a 45 MB
checkpoint, 11 MB of weights). Measured for each hook, interleaved, medians of --repeats:
- hook: how long the hook keeps the control loop (`TrackingCallback.on_trial_*`: it enqueues);
- written: until the tracking call it queued is written (`flush()`);
- synchronous: the same tracking calls made in the hook itself, as the callback did before
  (`TrackingCallback._complete` / `_result` called directly).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from report import machine, markdown_table, now, replace_block  # noqa: E402 - beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def checkpoint_like_a_trial(folder: Path):
    """A checkpoint with the tensors of an hvae + VampPrior trial (static MNIST, K = 500)."""
    import torch
    from ray import tune

    from trainables.config import TrainConfig
    from trainables.data import DATASETS
    from trainables.models import build_model

    config = TrainConfig(model="hvae", prior="vampprior", K=500)
    spec = DATASETS[config.dataset]
    model = build_model(config, spec, torch.rand(config.K, spec.dim))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"model": state, "best_model": state, "optimizer": {"exp_avg": moments, "exp_avg_sq": moments}},
               folder / "checkpoint.pt")
    return config, tune.Checkpoint.from_directory(str(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, help="replace the bench_tracking block of this markdown file")
    args = parser.parse_args()

    from study.search import chosen_settings, Group
    from study.stack import MlflowServer
    from study.tracking import StudyTracker, TrackingCallback

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vamp-bench-tracking-") as tmp:
        tmp = Path(tmp)
        (tmp / "ckpt").mkdir()
        config, checkpoint = checkpoint_like_a_trial(tmp / "ckpt")
        size = (tmp / "ckpt" / "checkpoint.pt").stat().st_size / 2 ** 20
        server = MlflowServer(f"sqlite:///{tmp}/mlflow.db", (tmp / "artifacts").as_uri(), folder=tmp / "server")
        server.start()
        try:
            os.environ.update(server.client_env())
            tracker = StudyTracker(server.tracking_uri, "bench", "bench")
            parent = tracker.parent_run({})
            base = {k: v for k, v in config.to_dict().items() if k not in ("model", "prior", "lr", "K", "seed")}
            callback = TrackingCallback(tracker, parent, base)
            group = Group("hvae", "vampprior", args.repeats)
            times = {name: [] for name in ("end hook", "end written", "end synchronous",
                                           "epoch hook", "epoch written", "epoch synchronous")}
            for number in range(2 * args.repeats):
                key = group.trial_key(number)
                sampled = {"trial": key, "number": number, **chosen_settings(group, {"lr": 5e-4, "K": 500}, number)}
                trial = SimpleNamespace(config=sampled, checkpoint=checkpoint, trial_id=key,
                                        last_result={"epoch": 1, "stop_reason": "max_epochs"})
                callback.on_trial_start(0, [], trial)
                callback.flush()
                result = {"epoch": 1, "val_loss": 100.0, "train_loss": 101.0, "beta": 0.01, "best_val_loss": 100.0}
                synchronous = number % 2 == 1  # interleaved: queued, synchronous, queued, ...
                for what, hook, direct in (
                        ("epoch", lambda: callback.on_trial_result(0, [], trial, result),
                         lambda: callback._result(key, sampled, result)),
                        ("end", lambda: callback.on_trial_complete(0, [], trial),
                         lambda: callback._complete(key, sampled, trial.last_result, checkpoint))):
                    t0 = time.perf_counter()
                    if synchronous:
                        direct()
                        times[f"{what} synchronous"].append(time.perf_counter() - t0)
                        continue
                    hook()
                    times[f"{what} hook"].append(time.perf_counter() - t0)
                    callback.flush()
                    times[f"{what} written"].append(time.perf_counter() - t0)
        finally:
            server.stop()

    def ms(name: str) -> str:
        return f"{1000 * statistics.median(times[name]):.2f}"

    text = (f"Tracking callback against a real MLflow server ({now()}; {machine()}; "
            f"{args.repeats} repeats each, interleaved, medians; hvae + VampPrior checkpoint {size:.0f} MB; "
            f"took {time.time() - started:.0f} s).\n\n"
            f"Command: `.venv/bin/python benchmarks/bench_tracking.py --repeats {args.repeats}`\n\n"
            + markdown_table(["hook", "control loop held, queued (ms)", "until written (ms)",
                              "control loop held, synchronous (ms)"],
                             [[label, ms(f"{what} hook"), ms(f"{what} written"), ms(f"{what} synchronous")]
                              for what, label in (("epoch", "trial result (one epoch's metrics)"),
                                                  ("end", "trial end (best weights uploaded as the run's model)"))])
            + "\n")
    print(text)
    if args.out:
        replace_block(args.out, "bench_tracking", text)


if __name__ == "__main__":
    main()
