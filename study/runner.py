"""`study run` and `study resume`: the trials of each model on Ray Tune, chosen by Optuna and
stopped early by ASHA, tracked in MLflow; then the champion of each (model, prior) group is
scored on the test set and registered.

One Tune experiment per model (`<storage>/<study>-<model>`): Optuna's define-by-run space picks
the prior, the learning rate and, for priors with components, K; one seeded point per prior
makes sure that every group is tried.

Resume safety. Tune snapshots its experiment state every TUNE_GLOBAL_CHECKPOINT_S seconds (by
default about 10 s) and deletes checkpoints beyond `num_to_keep`; a snapshot older than the
newest checkpoints can then name a deleted one. Here the snapshot is taken after every result
(period 0: a few KB per epoch) and two checkpoints are kept, so the snapshot always names one
that exists. A trial whose restored checkpoint says it had finished reports and ends at once.
"""
from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from study.errors import StudyInterrupted
from study.live import LiveTable
from study.settings import Targets
from study.tracking import StudyTracker, TrackingCallback, run_name
from trainables.errors import InputError
from trainables.tune_trainable import train_trial, trial_config

SAMPLERS = {
    "tpe": lambda seed: __import__("optuna").samplers.TPESampler(seed=seed),
    "random": lambda seed: __import__("optuna").samplers.RandomSampler(seed=seed),
}


@dataclass
class StudyRun:
    """What a finished study hands to the registry."""

    spec: object
    targets: Targets
    tracker: StudyTracker
    parent_id: str
    splits_ref: object
    results: dict = field(default_factory=dict)  # model -> ResultGrid


def base_config(spec, model: str) -> dict:
    """The TrainConfig fields every trial of `model` shares (the search adds prior, lr, K)."""
    config = spec.train_config(model=model, prior=spec.priors()[0], lr=1e-3, K=None, seed=spec.search.seed)
    return {k: v for k, v in config.to_dict().items() if k not in ("prior", "lr", "K")}


def check_storage(spec, targets: Targets, resume: bool) -> None:
    """`run` must not overwrite a study; `resume` needs one."""
    found = [m for m in spec.models if tune.Tuner.can_restore(targets.experiment_path(spec.name, m))]
    if resume and not found:
        raise InputError(f"{spec.source}: name: no study {spec.name!r} in {targets.storage} to resume; "
                         "start it with `study run`")
    if not resume and found:
        raise InputError(f"{spec.source}: name: study {spec.name!r} already exists in {targets.storage}; "
                         "continue it with `study resume`, or give the study another name")


def check_gpus(spec, available: float) -> None:
    """Trials asking for GPUs would wait forever on a cluster without them: refuse at once."""
    wanted = spec.resources.gpus
    if wanted > 0 and available < wanted:
        raise InputError(f"{spec.source}: resources.gpus: {wanted} GPU per trial requested, but the Ray "
                         f"cluster has {available:g}; set resources.gpus: 0 to run on CPUs")


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


#: AWS credentials that Ray Tune copies from the driver's environment into every trial's
#: runtime environment, which Ray's runtime-env agent then writes to its log in clear.
AWS_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def keep_aws_keys_out_of_ray() -> None:
    """Move AWS keys from the environment into a private credentials file (mode 600, removed at
    exit) named by AWS_SHARED_CREDENTIALS_FILE, which boto3 and pyarrow read and Ray does not copy.
    Nodes of a remote cluster use their own credentials, as they must anyway."""
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


def start_ray(targets: Targets, spec) -> None:
    """Join the cluster at `targets.address`, or start a local Ray instance."""
    keep_aws_keys_out_of_ray()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # see the module docstring
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if targets.address:
        ray.init(address=targets.address, log_to_driver=False)
        try:
            check_gpus(spec, ray.cluster_resources().get("GPU", 0))
        except InputError:
            ray.shutdown()
            raise
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_gpus=local_gpus())


def tuner_for(spec, model: str, targets: Targets, callbacks: list, splits_ref, resume: bool) -> tune.Tuner:
    base = base_config(spec, model)
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    trainable = tune.with_resources(tune.with_parameters(train_trial, base=base, splits=splits_ref), resources)
    path = targets.experiment_path(spec.name, model)
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    search = OptunaSearch(space=spec.suggest, metric="best_val_loss", mode="min",
                          points_to_evaluate=spec.initial_points(),
                          sampler=SAMPLERS[spec.search.algorithm](spec.search.seed))
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=base["epochs"],
                              grace_period=spec.early_stopping.grace_period,
                              reduction_factor=spec.early_stopping.reduction_factor)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search, scheduler=scheduler, num_samples=spec.search.trials_per_model,
            max_concurrent_trials=spec.search.max_concurrent,
            trial_name_creator=lambda t: run_name(trial_config(base, t.config), t.trial_id),
            trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{model}", storage_path=targets.storage, callbacks=callbacks, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0)),
    )


def run_trials(spec, targets: Targets, splits, *, resume: bool, console: Console) -> StudyRun:
    """Start Ray, open the study's MLflow experiment and parent run, and run every model's trials."""
    start_ray(targets, spec)
    tracker = StudyTracker(targets.tracking_uri, spec.name, targets.artifact_location(spec.name))
    parent_id = tracker.parent_run({"dataset": spec.dataset, "models": ",".join(spec.models),
                                    "priors": ",".join(spec.priors()), **targets.public()})
    study = StudyRun(spec, targets, tracker, parent_id, ray.put(splits))
    try:
        for model in spec.models:
            callbacks = [TrackingCallback(tracker, parent_id, base_config(spec, model), trial_config),
                         LiveTable(console, f"{spec.name}: {model}")]
            tuner = tuner_for(spec, model, targets, callbacks, study.splits_ref, resume)
            grid = tuner.fit()
            if grid.num_terminated + grid.num_errors < spec.search.trials_per_model:
                raise StudyInterrupted(f"study {spec.name!r} was interrupted during the trials of {model}; "
                                       f"its state is saved in {targets.storage}: continue with `study resume "
                                       f"{spec.source}`")
            study.results[model] = grid
    except StudyInterrupted:
        raise  # the parent run stays open: `study resume` continues it
    except BaseException:
        tracker.end_run(parent_id, "FAILED")
        raise
    return study
