"""Overheads of the study service, measured on a real `study run` (embedded default).

    .venv/bin/python benchmarks/bench_study.py [SPACE.yaml ...] [--out docs/benchmarks.md]

For each space it runs `study run` in a fresh STUDY_HOME and reads MLflow afterwards:
- start to first epoch: from launching `study run` to the driver receiving the first epoch of
  the first trial (the MLflow timestamp of that epoch's metrics);
- study overhead: wall time minus the trials' own compute (the sum of their epoch_seconds,
  spread over the slots: `max_concurrent`, or the CPUs over `resources.cpus`) minus the
  champions' scoring (reported separately);
- report cost per epoch: for consecutive epochs of a trial, the time between their results at
  the driver minus the epoch's own epoch_seconds (checkpoint written and uploaded, result sent,
  MLflow logged), as a share of that time. Medians over all epochs but each trial's first.
Default spaces: the quickstart, and one realistic trial (hvae + VampPrior, K=500, all of static
MNIST, 3 epochs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml
from mlflow import MlflowClient
from report import machine, markdown_table  # beside this script

REPO = Path(__file__).resolve().parents[1]

REALISTIC = {
    "name": "realistic", "dataset": "static_mnist", "models": ["hvae"],
    "space": {"lr": [5.0e-4], "priors": {"vampprior": {"K": [500]}}},
    "fixed": {"epochs": 3, "warmup": 100, "patience": 50},
    "search": {"algorithm": "tpe", "seed": 0, "trials_per_group": 1},
    "early_stopping": {"grace_period": 3, "reduction_factor": 2},
    "resources": {"cpus": 2, "gpus": 0},
    "evaluation": {"samples": 100, "test_limit": 100},
}


def measure(space: Path) -> dict:
    spec = yaml.safe_load(space.read_text())
    with tempfile.TemporaryDirectory(prefix="vamp-bench-") as home:
        env = {**os.environ, "STUDY_HOME": home, "MLFLOW_TRACKING_URI": "", "STUDY_STORAGE": "", "RAY_ADDRESS": "",
               "STUDY_OPTUNA_STORAGE": ""}
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "study", "run", str(space), "--json"], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"study run {space} failed:\n{done.stderr[-3000:]}")
        wall = time.time() - started
        client = MlflowClient(f"sqlite:///{home}/mlflow.db")
        experiment = client.get_experiment_by_name(spec["name"])
        runs = client.search_runs([experiment.experiment_id], "tags.`vamp.role` = 'trial'")
        first_epoch, compute, gaps, shares = [], 0.0, [], []
        for run in runs:
            seconds = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")}
            arrived = {m.step: m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val_loss")}
            first_epoch.append(arrived[min(arrived)] - started)
            compute += sum(seconds.values())
            for epoch in sorted(arrived)[1:]:
                gap = arrived[epoch] - arrived[epoch - 1]
                gaps.append(gap - seconds[epoch])
                shares.append((gap - seconds[epoch]) / gap)
        trials_end = max(r.info.end_time for r in runs) / 1000
        scoring = started + wall - trials_end
    slots = spec["search"].get("max_concurrent") or max(1, int(os.cpu_count() // spec["resources"]["cpus"]))
    return {
        "space": spec["name"], "trials": len(runs), "wall_s": wall,
        "start_to_first_epoch_s": min(first_epoch),
        "trial_compute_s": compute, "slots": slots,
        "overhead_s": (trials_end - started) - compute / slots,
        "champion_scoring_s": scoring,
        "report_s_median": statistics.median(gaps) if gaps else float("nan"),
        "report_share_median": statistics.median(shares) if shares else float("nan"),
    }


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["space", "trials", "wall (s)", "start → first epoch (s)", "trial compute (s) / slots", "study overhead (s)",
         "champion scoring (s)", "report per epoch (s)", "report share of epoch"],
        [[r["space"], r["trials"], f"{r['wall_s']:.1f}", f"{r['start_to_first_epoch_s']:.1f}",
          f"{r['trial_compute_s']:.1f} / {r['slots']}", f"{r['overhead_s']:.1f}", f"{r['champion_scoring_s']:.1f}",
          f"{r['report_s_median']:.3f}", f"{100 * r['report_share_median']:.1f}%"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spaces", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    spaces = args.spaces
    with tempfile.TemporaryDirectory() as tmp:
        if not spaces:
            realistic = Path(tmp) / "realistic.yaml"
            realistic.write_text(yaml.safe_dump(REALISTIC))
            spaces = [REPO / "search_spaces" / "quickstart.yaml", realistic]
        rows = [measure(space) for space in spaces]
    text = (f"\n### Study overheads ({date.today()}, {machine()}, embedded default)\n\n"
            f"Command: `.venv/bin/python benchmarks/bench_study.py`\n\n{table(rows)}\n")
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
