"""MLflow tracking of a study: one experiment per study, one parent run per study, one child run
per trial (tag `mlflow.parentRunId`), metrics per epoch.

Only the driver writes to MLflow: trials need no access to the tracking server, a SQLite store
never sees two writers, and a trial is found again by its tags (`vamp.study_id`,
`vamp.trial_id`) after a crash, so a resumed trial continues its own run and no run is
duplicated.

`TrackingCallback` mirrors Tune's trials into MLflow on one background thread, in order: Tune's
control loop only enqueues, so a slow tracking server or a model upload never stalls the
scheduling of trials. `flush()` waits until everything is written and raises if a call failed.

A call fails only after MLflow's client has retried it (MLFLOW_HTTP_REQUEST_MAX_RETRIES, with
backoff: about 4 minutes by default), so a tracking server that restarts is ridden out. A call that
still fails means the server is gone: the callback then writes nothing more (`failed`) and the
runner stops the study. Writing on would leave gaps that nothing fills later (a resumed trial logs
the epochs after the last one its run holds); `study resume` brings MLflow up to date instead, from
the ledger and the checkpoints, which hold everything.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray import tune

from study import search
from trainables.config import TrainConfig
from trainables.tune_trainable import checkpoint_history, save_trial_model, trial_config

ROLE, STUDY, STUDY_ID, TRIAL_ID = "vamp.role", "vamp.study", "vamp.study_id", "vamp.trial_id"
STOP_REASON, FAILURE, NODE_ID = "vamp.stop_reason", "vamp.failure", "ray.node_id"

#: Per-epoch results logged as metrics (names as in trainables.train.EpochMetrics).
EPOCH_METRICS = ("beta", "train_loss", "train_re", "train_kl", "val_loss", "val_re", "val_kl",
                 "epoch_seconds", "best_val_loss")


class TrackingError(RuntimeError):
    """A tracking call failed; the study's results may be incomplete in MLflow."""


class StudyTracker:
    """The MLflow experiment of one study and its runs (synchronous calls)."""

    def __init__(self, tracking_uri: str, study: str, study_id: str, artifact_location: str | None = None):
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.study = study
        self.study_id = study_id
        experiment = self.client.get_experiment_by_name(study)
        self.experiment_id = (experiment.experiment_id if experiment else
                              self.client.create_experiment(study, artifact_location=artifact_location,
                                                            tags={STUDY: study}))

    def _find(self, **tags: str):
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {STUDY_ID: self.study_id, **tags}.items())
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
                                     tags={ROLE: "study", STUDY: self.study, STUDY_ID: self.study_id})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def run_of_trial(self, key: str):
        """The child run of a trial, or None."""
        return self._find(**{TRIAL_ID: key})

    def trial_run(self, parent_id: str, key: str, config: TrainConfig, name: str) -> tuple[str, int]:
        """The child run of a trial (created if new) and the last epoch it has logged (0 for a new run)."""
        run = self.run_of_trial(key)
        if run is not None:
            if run.info.status != "RUNNING":  # continued by `study resume` (after a failure, perhaps)
                self.client.update_run(run.info.run_id, status="RUNNING")
                for tag in (STOP_REASON, FAILURE):
                    if tag in run.data.tags:
                        self.client.delete_tag(run.info.run_id, tag)
            return run.info.run_id, int(run.data.metrics.get("epoch", 0))
        tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: name, ROLE: "trial", STUDY: self.study,
                STUDY_ID: self.study_id, TRIAL_ID: key, "dataset": config.dataset, "model": config.model,
                "prior": config.prior}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {k: v for k, v in config.to_dict().items() if k != "K" or config.mixture}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id, 0

    def log_epoch(self, run_id: str, result: dict) -> None:
        step, now = int(result["epoch"]), int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS if k in result]
        self.client.log_batch(run_id, metrics=metrics + [Metric("epoch", step, now, step)])

    def log_epochs(self, run_id: str, epochs, after: int) -> int:
        """Log the epochs past `after` (the last epoch the run has); returns the run's last epoch now."""
        for result in epochs:
            if int(result.get("epoch", 0)) > after:
                self.log_epoch(run_id, result)
                after = int(result["epoch"])
        return after

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
    """Mirrors Tune's trials into MLflow child runs, on one background thread (see the module)."""

    def __init__(self, tracker: StudyTracker, parent_id: str, base: dict):
        self.tracker = tracker
        self.parent_id = parent_id
        self.base = base  # the study's fixed TrainConfig fields
        self.runs: dict[str, tuple[str, int]] = {}  # trial key -> (run id, last logged epoch); writer thread only
        self.nodes: dict[str, str] = {}  # trial key -> the Ray node it last ran on; writer thread only
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vamp-tracking")
        self.pending: list[Future] = []
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into tuner.pkl; a study never restores from it (the ledger
        # and the tags above are its state), so keep only what names the study.
        return {"tracking_uri": self.tracker.tracking_uri, "study": self.tracker.study}

    # ---------------------------------------------------------------- the writer thread

    def _submit(self, fn, *args) -> None:
        def call():
            if self.failed:  # the server is gone: nothing more is written (see the module)
                return
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - reported by flush(), with the study's resume hint
                with self.lock:
                    self.errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")
        with self.lock:
            self.pending = [f for f in self.pending if not f.done()]
            self.pending.append(self.writer.submit(call))

    @property
    def failed(self) -> bool:
        """A call failed after the client's retries: later calls are skipped, the study should stop."""
        return bool(self.errors)

    def backlog(self) -> int:
        """Tracking calls not written yet."""
        with self.lock:
            return sum(not f.done() for f in self.pending)

    def flush(self) -> None:
        """Wait until every queued call is written; raise TrackingError if any failed. Interrupted
        (a second Ctrl-C), drop what is left rather than hold the process until it is written."""
        with self.lock:
            pending = list(self.pending)
        try:
            for future in pending:
                future.result()
        except KeyboardInterrupt:
            dropped = sum(f.cancel() for f in pending)
            self.writer.shutdown(wait=False, cancel_futures=True)
            raise KeyboardInterrupt(f"{dropped} tracking calls not written") from None
        if self.errors:
            raise TrackingError("; ".join(self.errors[:5]))

    def _run(self, key: str, sampled: dict) -> str:
        if key not in self.runs:
            config = trial_config(self.base, sampled)
            self.runs[key] = self.tracker.trial_run(self.parent_id, key, config,
                                                    search.run_name(config, int(sampled["number"])))
        return self.runs[key][0]

    def _start(self, key: str, sampled: dict) -> None:
        self._run(key, sampled)

    def _result(self, key: str, sampled: dict, result: dict) -> None:
        run_id = self._run(key, sampled)
        # A trial continued from a checkpoint sends the epochs before it once (`restored_history`):
        # those a crash kept from being logged are logged now. Epochs already logged are not.
        epochs = [*json.loads(result.get("restored_history", "[]")), result]
        self.runs[key] = (run_id, self.tracker.log_epochs(run_id, epochs, self.runs[key][1]))
        node = result.get("node_id")
        if node and node != self.nodes.get(key):
            self.nodes[key] = node
            self.tracker.client.set_tag(run_id, NODE_ID, node)

    def _complete(self, key: str, sampled: dict, result: dict, checkpoint) -> None:
        run_id = self._run(key, sampled)
        tags = {STOP_REASON: result.get("stop_reason") or "asha"}  # a scheduler stop has no last word
        if result.get("diverged"):
            tags[FAILURE] = str(result["diverged"])
        if checkpoint is not None:
            self.tracker.log_model(run_id, trial_config(self.base, sampled), checkpoint)
        self.tracker.end_run(run_id, "FINISHED", **tags)

    def _error(self, key: str, sampled: dict, message: str) -> None:
        self.tracker.end_run(self._run(key, sampled), "FAILED", **{STOP_REASON: "failed", FAILURE: message})

    # ---------------------------------------------------------------- Tune's hooks (control loop)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(self._start, trial.config["trial"], dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit(self._result, trial.config["trial"], dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        # A trial resumed by `study resume` that ended at once has no checkpoint of this run: its
        # weights are in the checkpoint it was resumed from.
        self._submit(self._complete, trial.config["trial"], dict(trial.config), dict(trial.last_result or {}),
                     trial.checkpoint or trial.config.get("checkpoint"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit(self._error, trial.config["trial"], dict(trial.config), error_text(trial)[-4000:])


def mirror_ended_trials(tracker: StudyTracker, parent_id: str, ledger) -> int:
    """Make MLflow agree with the ledger about trials that have ended, after a crash lost tracking
    calls: each gets its run (created if missing), the epochs its checkpoint holds that the run
    lacks, its best weights, and its end with its stop reason. Returns how many runs it touched."""
    from optuna.trial import TrialState

    runs = {r.data.tags.get(TRIAL_ID): r for r in tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{STUDY_ID}` = '{tracker.study_id}' and tags.`{ROLE}` = 'trial'",
        max_results=10000)}
    touched = 0
    for group in ledger.groups:
        for trial in ledger.trials(group):
            key = group.trial_key(trial.number)
            run = runs.get(key)
            if trial.state == TrialState.RUNNING or (run is not None and run.info.status != "RUNNING"):
                continue
            config = search.trial_config(ledger.spec, group, trial.params, search.trial_seed(ledger.spec, group,
                                                                                             trial.number))
            run_id, logged = tracker.trial_run(parent_id, key, config, search.run_name(config, trial.number))
            checkpoint = trial.user_attrs.get("checkpoint")
            if checkpoint:
                tracker.log_epochs(run_id, checkpoint_history(checkpoint), logged)
                if not tracker.client.list_artifacts(run_id, "model"):
                    tracker.log_model(run_id, config, checkpoint)
            tracker.end_run(run_id, "FINISHED", **{STOP_REASON: trial.user_attrs.get("stop_reason", "")})
            touched += 1
    return touched


def error_text(trial) -> str:
    """The trial's error: Tune writes it to the trial's local error file before calling back
    (`get_error()` reads storage, which is synced later)."""
    path = Path(trial.error_file) if trial.error_file else None
    if path is not None and path.is_file():
        return path.read_text().strip()
    return str(trial.get_error() or "the trial failed")
