"""`study run`, `study resume`, `study status` and `study pull`.

Every check of the input happens before anything is created: the spec file, the dataset, the
GPUs the trials ask for, whether the study exists in storage. Only then do Ray, the MLflow
experiment and the storage folders come into being.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from study import settings
from study.spec import load_space
from trainables.errors import InputError


def run_study(space: Path, *, tracking_uri: str | None, storage: str | None, address: str | None,
              dry_run: bool, resume: bool, console: Console) -> dict:
    import ray

    from study.registry import register_champions
    from study.runner import check_gpus, check_storage, local_gpus, run_trials
    from trainables.data import load_dataset

    started = time.perf_counter()
    spec = load_space(space)
    targets = settings.resolve(spec, tracking_uri=tracking_uri, storage=storage, address=address)
    splits = load_dataset(spec.dataset)  # a dataset that cannot be had fails here, at once
    if not targets.address:
        check_gpus(spec, local_gpus())
    check_storage(spec, targets, resume)
    plan = {"study": spec.name, "dataset": spec.dataset, "models": spec.models, "priors": spec.priors(),
            "trials": spec.search.trials_per_model * len(spec.models), **targets.public()}
    if dry_run:
        return {**plan, "dry_run": True}

    console.print(f"study [bold]{escape(spec.name)}[/bold]: {plan['trials']} trials of {', '.join(spec.models)} "
                  f"on {escape(spec.dataset)}; tracking {escape(plan['tracking_uri'])}, storage {escape(plan['storage'])}")
    try:
        study = run_trials(spec, targets, splits, resume=resume, console=console)
        try:
            champions = register_champions(study, lambda msg: console.print(escape(msg)))
        except BaseException:
            study.tracker.end_run(study.parent_id, "FAILED")  # `study resume` registers what is missing
            raise
        study.tracker.end_run(study.parent_id, "FINISHED")
    finally:
        ray.shutdown()
    _print_champions(console, champions)
    return {**plan, "champions": champions, "seconds": round(time.perf_counter() - started, 1)}


def _print_champions(console: Console, rows: list[dict]) -> None:
    table = Table(title="champions", title_justify="left")
    for column in ("registered model", "trial", "val loss", "test LL", "version", "champion"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["trial"], f"{r['val_loss']:.2f}",
                      "" if r["test_ll"] is None else f"{r['test_ll']:.2f}", str(r["version"]),
                      str(r["champion_version"]))
    console.print(table)


def status(study: str | None, *, tracking_uri: str | None) -> dict:
    """The trials of a study (or the list of studies) from the tracking server."""
    from mlflow import MlflowClient

    from study.tracking import FAILURE, ROLE, STOP_REASON, STUDY

    uri = settings.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    if study is None:
        experiments = client.search_experiments(filter_string=f"tags.`{STUDY}` != ''")
        return {"tracking_uri": uri, "studies": sorted(e.name for e in experiments)}
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise InputError(f"no study {study!r} at {settings.without_userinfo(uri)}")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = 'trial'", max_results=10000,
                              order_by=["attributes.start_time ASC"])
    trials = [{"trial": r.data.tags.get(f"mlflow.runName", r.info.run_name), "state": r.info.status.lower(),
               "stopped": r.data.tags.get(STOP_REASON, ""), "epoch": int(r.data.metrics.get("epoch", 0)),
               "val_loss": r.data.metrics.get("val_loss"), "best_val_loss": r.data.metrics.get("best_val_loss"),
               "test_ll": r.data.metrics.get("test_ll"), "failure": r.data.tags.get(FAILURE)} for r in runs]
    return {"study": study, "tracking_uri": settings.without_userinfo(uri), "trials": trials}


def print_status(console: Console, result: dict) -> None:
    if "studies" in result:
        console.print("\n".join(result["studies"]) or "no studies")
        return
    table = Table(title=f"study {result['study']}", title_justify="left")
    for column in ("trial", "state", "stopped", "epoch", "val loss", "best", "test LL"):
        table.add_column(column)
    for t in result["trials"]:
        table.add_row(t["trial"], t["state"], t["stopped"].replace("_", " "), str(t["epoch"]),
                      *("" if t[k] is None else f"{t[k]:.2f}" for k in ("val_loss", "best_val_loss", "test_ll")))
    console.print(table)

