"""Scheduling at scale, simulated: the real engine on a local Ray that pretends N GPUs.

    .venv/bin/python benchmarks/bench_scheduler.py [--gpus 1 4 8 32] [--epochs 12] [--time-scale 0.5] \
        [--out docs/benchmarks.md]

No cluster of GPUs is at hand, so this runs the study engine itself (real Ray Tune, the real
GroupedSearch / GroupedEarlyStopping / LedgerCallback over a real Optuna storage, the real MLflow
tracking callback on SQLite, without the model uploads at a trial's end) on a local Ray instance started with `num_gpus=N` and enough CPUs
that GPUs are the only constraint, with a stand-in trainable: each epoch it sleeps the epoch time
of its (model, prior) on a GPU (EPOCH_SECONDS, times --time-scale), reports a validation loss
from a seeded learning curve, writes a small checkpoint, and stops by itself after `patience`
epochs without improvement or at max epochs, as the real trainable does.

The space is search_spaces/omniglot.yaml (4 models x 4 priors, 4 trials per group, per-model GPU
fractions) with its epochs scaled down (--epochs; patience and grace period scaled alike). The
same trials are run by the engine before this change (`legacy`: one Tune experiment per model,
one after another, one Optuna search over prior/lr/K and one ASHA per model, at most 4 trials at
once, as the old omniglot.yaml said), with the same resources and 16 trials per model.

Reported per engine and N, in simulated seconds (wall seconds / time scale):
- makespan: first trial start to last trial end;
- busy while waiting: the mean share of the N GPUs held by running trials, from the first trial's
  start until the last trial has started (while some trial still waited for a slot);
- busy overall: the same over the whole makespan (the tail, when the last trials run alone, is
  idle by nature);
- longest trial: the makespan cannot fall below it.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

from report import machine, markdown_table, now, replace_block  # noqa: E402 - beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Seconds per Omniglot epoch (230 training steps of batch 100 + validation on 1345 images) on one
#: H100, by (model, prior kind). No GPU was lent to measure them: they are estimates, the larger of
#: (a) a launch floor, ~600 CUDA kernels per training step at ~5 us each (dense models run about
#: 300 small operators forward and backward, docs/benchmarks.md "Where the time goes"), and (b) the
#: multiply-adds per step that benchmarks/floor.py counts (docs/benchmarks.md, GMAC/step: vae 0.29 /
#: 1.31, hvae 0.63 / 1.66, convhvae 66 / 111, pixelhvae 75 / 120 for standard / VampPrior) at an
#: assumed 20 TFLOP/s effective for these small shapes, plus 15% for validation. What the benchmark
#: tests (occupancy, makespan against N) depends on their ratios more than on their values.
EPOCH_SECONDS = {
    ("vae", "standard"): 0.8, ("vae", "mixture"): 1.0,
    ("hvae", "standard"): 1.2, ("hvae", "mixture"): 1.6,
    ("convhvae", "standard"): 2.2, ("convhvae", "mixture"): 3.5,
    ("pixelhvae", "standard"): 2.5, ("pixelhvae", "mixture"): 3.9,
}
#: Where each group's learning curve levels out (nats): groups differ far more than their trials.
FLOOR = {"vae": 105.0, "hvae": 101.0, "convhvae": 97.0, "pixelhvae": 90.0}


def sim_trial(config: dict, *, base: dict, splits, scale: float, patience: int) -> None:
    """The stand-in trainable (see the module docstring); a Tune function trainable."""
    import json
    import tempfile as tmp
    import time as clock

    from ray import tune

    kind = "standard" if config["prior"] == "standard" else "mixture"
    seconds = EPOCH_SECONDS[(config["model"], kind)] * scale
    rng = random.Random(config["seed"])
    epochs = base["epochs"]
    lr_penalty = 8.0 * abs(math.log10(config["lr"] / 2.5e-4))
    floor = FLOOR[config["model"]] - (2.0 if kind == "mixture" else 0.0) + lr_penalty + rng.gauss(0, 1.0)
    turn = rng.randint(max(2, epochs // 3), epochs)  # after this epoch the validation loss creeps up
    best, best_epoch = math.inf, 0
    for epoch in range(1, epochs + 1):
        clock.sleep(seconds)
        loss = floor + 400.0 * math.exp(-epoch / 2.0) + 0.3 * max(0, epoch - turn) + rng.gauss(0, 0.2)
        if loss < best:
            best, best_epoch = loss, epoch
        stopped = epoch - best_epoch >= patience
        reason = "early_stopping" if stopped else ("max_epochs" if epoch == epochs else "")
        result = {"epoch": epoch, "val_loss": loss, "best_val_loss": best, "best_epoch": best_epoch,
                  "stop_reason": reason}
        with tmp.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps(result))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        if reason:
            return


class Occupancy:
    """Start and end times of every trial, with the GPUs it holds."""

    def __init__(self, gpus_of):
        from ray import tune

        outer = self

        class Recorder(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                outer.start[trial.trial_id] = time.monotonic()
                outer.gpus[trial.trial_id] = gpus_of(trial.config)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.end[trial.trial_id] = time.monotonic()

            on_trial_error = on_trial_complete

        self.callback = Recorder()
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.gpus: dict[str, float] = {}

    def summary(self, n_gpus: int, scale: float) -> dict:
        t0, last_start = min(self.start.values()), max(self.start.values())
        t1 = max(self.end.values())

        def busy(a: float, b: float) -> float:
            if b <= a:
                return float("nan")
            held = sum(self.gpus[k] * max(0.0, min(self.end[k], b) - max(self.start[k], a)) for k in self.start)
            return held / (n_gpus * (b - a))

        durations = [self.end[k] - self.start[k] for k in self.start]
        return {"trials": len(self.start), "makespan": (t1 - t0) / scale,
                "busy_waiting": busy(t0, last_start), "busy_overall": busy(t0, t1),
                "longest": max(durations) / scale, "last_start": (last_start - t0) / scale}


def scaled_space(epochs: int) -> dict:
    space = yaml.safe_load((REPO / "search_spaces" / "omniglot.yaml").read_text())
    space["fixed"]["epochs"] = epochs
    space["fixed"]["patience"] = patience_for(epochs)
    space["early_stopping"]["grace_period"] = max(1, epochs // 6)
    space["name"] = "bench"
    return space


def patience_for(epochs: int) -> int:
    return max(2, round(epochs * 50 / 2000 * 10))  # the paper's 50 of 2000, ten times as long here


def _no_model_uploads():
    from study.tracking import TrackingCallback

    class NoModelUploads(TrackingCallback):
        """The tracking callback without the upload of a trial's best weights at its end (the
        stand-in trials have none; bench_tracking.py measures that upload)."""

        def _complete(self, key, sampled, result, checkpoint):
            super()._complete(key, sampled, result, None)

    return NoModelUploads


def run_engine(space: dict, n_gpus: int, scale: float, folder: Path) -> dict:
    import ray

    from study.ledger import Ledger
    from study.manifest import Manifest, StudyFolder
    from study.runner import StudyRun, tuner_for
    from study.settings import Targets
    from study.spec import parse_space
    from study.search import fixed_settings
    from study.tracking import StudyTracker

    NoModelUploads = _no_model_uploads()

    spec = parse_space(space, "omniglot.yaml (scaled)")
    ray.init(address="local", num_cpus=64, num_gpus=n_gpus, include_dashboard=False, log_to_driver=False)
    try:
        study_folder = StudyFolder(str(folder / "ray"), spec.name)
        manifest = Manifest(name=spec.name, study_id="bench", created=time.time(), optuna_storage="",
                            fingerprint="", spec={})
        ledger = Ledger(f"sqlite:///{folder}/optuna.db", spec)
        tracker = StudyTracker(f"sqlite:///{folder}/mlflow.db", spec.name, "bench", (folder / "artifacts").as_uri())
        parent = tracker.parent_run({})
        targets = Targets("", "", str(folder / "ray"), None, folder)
        study = StudyRun(spec, targets, study_folder, study_folder.begin_run(manifest), ledger, tracker, parent, None)
        occupancy = Occupancy(lambda config: spec.resources.of(config["model"])["gpu"])
        tracking = NoModelUploads(tracker, parent, fixed_settings(spec))
        trainable = _bind(sim_trial, scale=scale, patience=spec.fixed.patience)
        tuner_for(study, [tracking, occupancy.callback], trainable=trainable).fit()
        tracking.flush()
        return occupancy.summary(n_gpus, scale)
    finally:
        ray.shutdown()
        os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)


class LegacySpace:
    """The old engine's define-by-run space (study/spec.py at e7936d7): the prior, lr, and K."""

    def __init__(self, priors: dict, low: float, high: float):
        self.priors, self.low, self.high = priors, low, high

    def __call__(self, trial) -> None:
        prior = trial.suggest_categorical("prior", list(self.priors))
        trial.suggest_float("lr", self.low, self.high, log=True)
        if self.priors[prior].get("K"):
            trial.suggest_categorical(f"K_{prior}", self.priors[prior]["K"])


def run_legacy(space: dict, n_gpus: int, scale: float, folder: Path) -> dict:
    """The engine before this change (study/runner.py at e7936d7): one Tuner per model, in turn."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    priors = space["space"]["priors"]
    lr_low, lr_high = space["space"]["lr"]["loguniform"]
    gpus = space["resources"]["gpus"]
    epochs = space["fixed"]["epochs"]
    per_model = len(priors) * space["search"]["trials_per_group"]

    def legacy_trial(config, *, model, scale, patience):
        import zlib

        sim_trial({"model": model, "prior": config["prior"], "lr": config["lr"],
                   "seed": zlib.crc32(tune.get_context().get_trial_id().encode())},
                  base={"epochs": epochs}, splits=None, scale=scale, patience=patience)

    ray.init(address="local", num_cpus=64, num_gpus=n_gpus, include_dashboard=False, log_to_driver=False)
    current = {}
    occupancy = Occupancy(lambda config: current["gpu"])
    try:
        for model in space["models"]:
            current["gpu"] = gpus[model]
            trainable = tune.with_resources(
                tune.with_parameters(legacy_trial, model=model, scale=scale, patience=space["fixed"]["patience"]),
                {"cpu": 1, "gpu": gpus[model]})
            tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(space=LegacySpace(priors, lr_low, lr_high), metric="best_val_loss", mode="min",
                                        sampler=optuna.samplers.TPESampler(seed=0)),
                scheduler=ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=epochs,
                                        grace_period=space["early_stopping"]["grace_period"],
                                        reduction_factor=space["early_stopping"]["reduction_factor"]),
                num_samples=per_model, max_concurrent_trials=4),
                run_config=tune.RunConfig(name=f"legacy-{model}", storage_path=str(folder / "legacy"), verbose=0,
                                          callbacks=[occupancy.callback],
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2))).fit()
        return occupancy.summary(n_gpus, scale)
    finally:
        ray.shutdown()


def _bind(fn, **fixed):
    def trainable(config, *, base, splits):
        return fn(config, base=base, splits=splits, **fixed)
    return trainable


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["GPUs", "engine", "trials", "makespan (s)", "busy while trials wait", "busy overall",
         "last trial started (s)", "longest trial (s)"],
        [[r["gpus"], r["engine"], r["trials"], f"{r['makespan']:.0f}", f"{100 * r['busy_waiting']:.0f}%",
          f"{100 * r['busy_overall']:.0f}%", f"{r['last_start']:.0f}", f"{r['longest']:.0f}"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 4, 8, 32])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--time-scale", type=float, default=0.5, help="wall seconds per simulated second")
    parser.add_argument("--engines", nargs="+", default=["groups", "legacy"], choices=["groups", "legacy"])
    parser.add_argument("--out", type=Path, help="replace the bench_scheduler block of this markdown file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    space = scaled_space(args.epochs)
    started = time.time()
    rows = []
    for n in args.gpus:
        for engine in args.engines:  # interleaved: both engines at each N, on the same machine state
            with tempfile.TemporaryDirectory(prefix="vamp-sched-") as tmp:
                run = run_engine if engine == "groups" else run_legacy
                row = {"gpus": n, "engine": engine, **run(space, n, args.time_scale, Path(tmp))}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    text = (f"Simulated Omniglot study ({now()}; {machine()}; benchmark took "
            f"{time.time() - started:.0f} s): search_spaces/omniglot.yaml with {args.epochs} epochs (patience "
            f"{space['fixed']['patience']}, grace period {space['early_stopping']['grace_period']}), "
            f"{len(space['models'])} models x {len(space['space']['priors'])} priors x "
            f"{space['search']['trials_per_group']} trials, time scale {args.time_scale}.\n\n"
            f"Command: `.venv/bin/python benchmarks/bench_scheduler.py --gpus {' '.join(map(str, args.gpus))} "
            f"--epochs {args.epochs} --time-scale {args.time_scale}`\n\n{table(rows)}\n")
    print(text)
    if args.out:
        replace_block(args.out, "bench_scheduler", text)


if __name__ == "__main__":
    main()
