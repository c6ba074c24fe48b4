"""One run of a study's driver (`study run`, or a `study resume`): Ray, then one Ray Tune
experiment that holds every trial of every (model, prior) group, so all models share the cluster
at once; the only limits on how many trials run together are the cluster's resources and, if
set, `search.max_concurrent`.

Each run is a fresh Tune experiment (`<storage>/<study>/run-<n>`): what a resumed study needs is
in its ledger (the Optuna storage: trials, states, checkpoints), which hands the trials an earlier
run left unended to the searcher first; each continues from its newest checkpoint in its own
MLflow run. Within a run, a trial whose worker, node or storage fails is restarted by Tune from
its last checkpoint up to `search.retries` times.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from rich.console import Console

from study.engine import GroupedEarlyStopping, GroupedSearch, LedgerCallback
from study.ledger import Ledger
from study.live import LiveTable
from study.manifest import Run, StudyFolder
from study.search import fixed_settings, run_name
from study.settings import Targets
from study.spec import StudySpec
from study.tracking import StudyTracker, TrackingCallback
from trainables.errors import InputError
from trainables.tune_trainable import train_trial, trial_config

STOP_POLL_SECONDS = 2.0


@dataclass
class StudyRun:
    """What one run of the driver works with."""

    spec: StudySpec
    targets: Targets
    folder: StudyFolder
    run: Run
    ledger: Ledger
    tracker: StudyTracker
    parent_id: str
    splits_ref: object
    stop_requested: bool = False


def check_gpus(spec: StudySpec, largest_node: float) -> None:
    """Trials asking for GPUs would wait forever where no node has them: refuse at once."""
    for model in spec.models:
        wanted = spec.resources.of(model)["gpu"]
        if wanted > 0 and largest_node < wanted:
            raise InputError(f"{spec.source}: resources.gpus: a {model} trial asks for {wanted:g} GPU, but the "
                             f"Ray cluster has {largest_node:g} on its largest node; set resources.gpus: 0 to "
                             "run on CPUs")


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _nodes() -> list[dict]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def trial_slots(spec: StudySpec) -> int:
    """How many trials the cluster can run at once (of the model that fits most often)."""
    def fits(model: str, node: dict) -> int:
        want = spec.resources.of(model)
        counts = [math.floor(node.get("CPU", 0) / want["cpu"] + 1e-9)]
        if want["gpu"] > 0:
            counts.append(math.floor(node.get("GPU", 0) / want["gpu"] + 1e-9))
        return min(counts)
    return max(1, max(sum(fits(m, node) for node in _nodes()) for m in spec.models))


#: AWS credentials that Ray Tune copies from the driver's environment into every trial's
#: runtime environment, which Ray's runtime-env agent then writes to its log in clear.
AWS_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def keep_aws_keys_out_of_ray() -> None:
    """Move AWS keys from the environment into a private credentials file (mode 600, removed at
    exit) named by AWS_SHARED_CREDENTIALS_FILE, which boto3 and pyarrow read and Ray does not copy.
    Nodes of a remote cluster use their own credentials, as they must anyway.
    Call it before anything opens S3: pyarrow's S3 filesystems keep the credential source they
    were made with."""
    keys = {name: os.environ.pop(name) for name in AWS_SECRET_VARIABLES if name in os.environ}
    if not keys:
        return
    profile = os.environ.get("AWS_PROFILE", "default")
    fields = {"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
              "AWS_SESSION_TOKEN": "aws_session_token", "AWS_SECURITY_TOKEN": "aws_security_token"}
    descriptor, path = tempfile.mkstemp(prefix="vamp-aws-", suffix=".ini")
    with os.fdopen(descriptor, "w") as f:  # mkstemp creates it readable by its owner only
        f.write(f"[{profile}]\n" + "".join(f"{fields[k]} = {v}\n" for k, v in keys.items()))
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = path
    atexit.register(lambda: Path(path).unlink(missing_ok=True))


def stop_on_sigterm() -> None:
    """SIGTERM (a pod or service being stopped) ends the study as Ctrl-C does: its trials stop,
    resumable, and the driver records it (rather than dying as on SIGKILL)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def start_ray(targets: Targets, spec: StudySpec) -> None:
    """Join the cluster at `targets.address`, or start a local Ray instance; refuse GPU requests
    that no node can meet (and leave the cluster again). Call keep_aws_keys_out_of_ray() first."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Every checkpoint forces Tune to snapshot its experiment state (num_to_keep is set): expected
    # here, not a bottleneck worth a warning per epoch. MLflow's download bars are noise too.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if targets.address:
        ray.init(address=targets.address, log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_gpus=local_gpus())
    try:
        check_gpus(spec, max((node.get("GPU", 0) for node in _nodes()), default=0))
    except InputError:
        ray.shutdown()
        raise


class _StopWhen(tune.Stopper):
    """Ends the whole Tune run once `condition()` holds: Tune stops every trial without completion
    callbacks, as on Ctrl-C, so each stays resumable in the ledger."""

    def __init__(self, condition):
        self.condition = condition

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.condition()

    def __getstate__(self) -> dict:  # pickled into tuner.pkl with the run config; never restored
        return {}


def tuner_for(study: StudyRun, callbacks: list, trainable=train_trial, stop_when=None) -> tune.Tuner:
    """The run's Tune experiment; `trainable(config, *, base, splits)` is the trial (a stand-in in
    benchmarks/bench_scheduler.py); once `stop_when()` holds, every trial stops, resumable."""
    spec = study.spec
    base = fixed_settings(spec)
    trainable = tune.with_resources(tune.with_parameters(trainable, base=base, splits=study.splits_ref),
                                    lambda config: spec.resources.of(config["model"]))
    slots = min(spec.search.max_concurrent or math.inf, trial_slots(spec))
    if spec.search.max_concurrent is None:
        # Tune keeps one trial pending for a custom searcher: the cluster would fill one trial per
        # control-loop step. Let it start as many as fit at once (GroupedSearch still hands out a
        # trial only for a free slot).
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(slots)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=GroupedSearch(study.ledger, slots), scheduler=GroupedEarlyStopping(study.ledger),
            num_samples=-1,
            max_concurrent_trials=spec.search.max_concurrent,
            # A trial's worker (torch imported, CUDA initialised) runs the next trial asking for the
            # same resources: each trial seeds everything it uses (trainables.experiment.prepare).
            reuse_actors=True,
            trial_name_creator=lambda t: run_name(trial_config(base, t.config), t.config["number"]),
            trial_dirname_creator=lambda t: t.config["trial"]),
        run_config=tune.RunConfig(
            name=study.folder.experiment_name(study.run), storage_path=study.folder.uri,
            callbacks=[LedgerCallback(study.ledger), *callbacks], verbose=0,
            stop=_StopWhen(stop_when) if stop_when else None,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.search.retries)),
    )


@contextmanager
def _stop_on_request(study: StudyRun):
    """While the trials run, a request from `study stop` (a file in the study's folder) ends them
    as Ctrl-C does: Tune stops, every unended trial stays resumable."""
    done = threading.Event()

    def watch():
        while not done.wait(STOP_POLL_SECONDS):
            try:
                requested = study.folder.stop_requested()
            except OSError:  # storage briefly unreachable: ask again
                continue
            if requested:
                study.stop_requested = True
                os.kill(os.getpid(), signal.SIGINT)
                return

    handler = signal.getsignal(signal.SIGINT)
    watcher = threading.Thread(target=watch, name="vamp-stop-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, handler)  # Tune leaves its own handler installed


def run_trials(study: StudyRun, console: Console) -> None:
    """Run every trial the ledger still has to run, tracked in MLflow; wait for the tracking.
    A tracking server that is gone (a call failed after the client's retries) or a ledger whose
    storage stayed away stops the trials, resumable; then TrackingError (from flush()) or
    LedgerUnreachable is raised."""
    tracking = TrackingCallback(study.tracker, study.parent_id, fixed_settings(study.spec))
    live = LiveTable(console, f"study {study.spec.name}")
    try:
        with _stop_on_request(study):
            tuner_for(study, [tracking, live], stop_when=lambda: tracking.failed or study.ledger.gone is not None).fit()
    except BaseException:  # what was tracked still gets written; the first error is the one told
        try:
            tracking.flush()
        except Exception as e:  # noqa: BLE001
            console.print(f"tracking: {e}")
        raise
    if study.ledger.gone is not None:  # stopped for it: write what can be, then say so
        with contextlib.suppress(Exception):
            tracking.flush()
        raise study.ledger.gone
    if tracking.backlog() and not tracking.failed:
        console.print(f"writing {tracking.backlog()} tracking calls to {study.targets.public()['tracking_uri']}")
    tracking.flush()
