"""MLflow tracking of a study (layout in DESIGN.md): one experiment per study, one parent run per
study, one child run per trial, metrics per epoch.

Only the driver writes to MLflow, through `TrackingCallback`: trials need no access to the
tracking server, a SQLite store never sees two writers, and a trial is found again by its tag
`vamp.trial_id` after a crash, so a resumed trial continues its own run and no run is duplicated.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray import tune

from trainables.config import MIXTURE_PRIORS, TrainConfig
from trainables.tune_trainable import save_trial_model

ROLE, STUDY, TRIAL_ID = "vamp.role", "vamp.study", "vamp.trial_id"
STOP_REASON, FAILURE, NODE_ID = "vamp.stop_reason", "vamp.failure", "ray.node_id"

#: Per-epoch results logged as metrics (names as in trainables.train.EpochMetrics).
EPOCH_METRICS = ("beta", "train_loss", "train_re", "train_kl", "val_loss", "val_re", "val_kl",
                 "epoch_seconds", "best_val_loss")


def format_lr(lr: float) -> str:
    """5e-4 for 0.0005, 2.7e-4 for 0.000273: short and sortable by eye."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_name(config: TrainConfig, trial_id: str) -> str:
    """hvae-vampprior-K500-lr5e-4-<trial>: the name a trial has in Tune and in MLflow."""
    k = f"-K{config.K}" if config.prior in MIXTURE_PRIORS else ""
    return f"{config.model}-{config.prior}{k}-lr{format_lr(config.lr)}-{trial_id}"


class StudyTracker:
    """The MLflow experiment of one study and its runs."""

    def __init__(self, tracking_uri: str, study: str, artifact_location: str | None = None):
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.study = study
        experiment = self.client.get_experiment_by_name(study)
        self.experiment_id = (experiment.experiment_id if experiment else
                              self.client.create_experiment(study, artifact_location=artifact_location,
                                                            tags={STUDY: study}))

    def _find(self, **tags: str):
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], query, max_results=2)
        return runs[0] if runs else None

    def parent_run(self, params: dict) -> str:
        """The study's parent run (created once, found again on resume)."""
        run = self._find(**{ROLE: "study"})
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=self.study,
                                     tags={ROLE: "study", STUDY: self.study})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def run_of_trial(self, trial_id: str):
        """The child run of a trial, or None."""
        return self._find(**{TRIAL_ID: trial_id})

    def trial_run(self, parent_id: str, trial_id: str, config: TrainConfig, name: str) -> tuple[str, int]:
        """The child run of a trial (created if new) and the last epoch it has logged (0 for a new run)."""
        run = self.run_of_trial(trial_id)
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, int(run.data.metrics.get("epoch", 0))
        tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: name, ROLE: "trial", STUDY: self.study,
                TRIAL_ID: trial_id, "dataset": config.dataset, "model": config.model, "prior": config.prior}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {k: v for k, v in config.to_dict().items() if k != "K" or config.prior in MIXTURE_PRIORS}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id, 0

    def log_epoch(self, run_id: str, result: dict) -> None:
        step, now = int(result["epoch"]), int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS if k in result]
        self.client.log_batch(run_id, metrics=metrics + [Metric("epoch", step, now, step)])

    def end_run(self, run_id: str, status: str, **tags: str) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status)

    def log_model(self, run_id: str, config: TrainConfig, checkpoint) -> None:
        """Log a trial's best weights and config as the run's `model/` artifacts."""
        with tempfile.TemporaryDirectory(prefix="vamp-model-") as tmp:
            self.client.log_artifacts(run_id, str(save_trial_model(config, checkpoint, Path(tmp) / "model")),
                                      "model")


class TrackingCallback(tune.Callback):
    """Mirrors Tune's trials into MLflow child runs."""

    def __init__(self, tracker: StudyTracker, parent_id: str, base: dict, config_of):
        self.tracker = tracker
        self.parent_id = parent_id
        self.config_of = config_of  # sampled params -> TrainConfig
        self.base = base
        self.runs: dict[str, tuple[str, int]] = {}  # trial id -> (run id, last logged epoch)
        self.nodes: dict[str, str] = {}  # trial id -> the Ray node it runs on

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        state = dict(self.__dict__)
        state["tracker"] = (self.tracker.tracking_uri, self.tracker.study)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.tracker = StudyTracker(*state["tracker"])

    def _run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            config = self.config_of(self.base, trial.config)
            self.runs[trial.trial_id] = self.tracker.trial_run(self.parent_id, trial.trial_id, config,
                                                               run_name(config, trial.trial_id))
        return self.runs[trial.trial_id][0]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trial)
        last = self.runs[trial.trial_id][1]
        if int(result.get("epoch", 0)) > last:  # a restored trial repeats epochs already logged
            self.tracker.log_epoch(run_id, result)
            self.runs[trial.trial_id] = (run_id, int(result["epoch"]))
        if result.get("node_id") and result["node_id"] != self.nodes.get(trial.trial_id):
            self.nodes[trial.trial_id] = result["node_id"]
            self.tracker.client.set_tag(run_id, NODE_ID, result["node_id"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = (trial.last_result or {}).get("stop_reason") or "asha"  # ASHA stops without a last word
        run_id = self._run(trial)
        if trial.checkpoint is not None:
            self.tracker.log_model(run_id, self.config_of(self.base, trial.config), trial.checkpoint)
        self.tracker.end_run(run_id, "FINISHED", **{STOP_REASON: reason})

    def on_trial_error(self, iteration, trials, trial, **info):
        message = _error_text(trial)[-4000:]
        self.tracker.end_run(self._run(trial), "FAILED", **{STOP_REASON: "failed", FAILURE: message})


def _error_text(trial) -> str:
    """The trial's error: Tune writes it to the trial's local error file before calling back
    (`get_error()` reads storage, which is synced later)."""
    path = Path(trial.error_file) if trial.error_file else None
    if path is not None and path.is_file():
        return path.read_text().strip()
    return str(trial.get_error() or "the trial failed")
