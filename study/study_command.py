"""`study run`, `study resume`, `study stop` and `study status`.

Every check of the input happens before anything is created: the spec file, the dataset, the
GPUs the trials ask for, whether the study exists (and, on resume, whether the file still says
what the study started with). Only then do Ray, the study's record, the Optuna studies, the
MLflow experiment and the storage folders come into being.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path

import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from study import settings
from study.errors import StudyFailed, StudyInterrupted
from study.heartbeat import GONE_AFTER_SECONDS, Heartbeat, driver_gone
from study.manifest import Manifest, StudyFolder, fingerprint, resume_problems, spec_data, this_machine
from study.spec import StudySpec, load_space
from trainables.errors import InputError


def _check_study(spec: StudySpec, folder: StudyFolder, targets: settings.Targets, resume: bool,
                 force: bool, console: Console) -> Manifest | None:
    """`run` must not overwrite a study; `resume` needs one, started with this file's settings,
    whose trials are where it left them, and that no driver runs now."""
    from study.ledger import existing_groups

    where = targets.public()
    if not resume:
        if folder.exists():
            raise InputError(f"{spec.source}: name: study {spec.name!r} already exists in {where['storage']}; "
                             "continue it with `study resume` (or `study run --resume`), or give the study "
                             "another name")
        found = existing_groups(targets.optuna_storage, spec.name)
        if found:
            raise InputError(f"{spec.source}: name: the Optuna storage {where['optuna_storage']} already holds "
                             f"studies of {spec.name!r} ({', '.join(found)}); give the study another name")
        return None
    if not folder.exists():
        raise InputError(f"{spec.source}: name: no study {spec.name!r} in {where['storage']} to resume; "
                         "start it with `study run`")
    manifest = folder.read()
    problems = resume_problems(folder.started_spec(manifest), spec)
    if problems:
        raise InputError("\n".join(f"{spec.source}: {p}" for p in problems))
    if manifest.optuna_storage != where["optuna_storage"] or (manifest.runs and not existing_groups(
            targets.optuna_storage, spec.name)):
        raise InputError(f"--optuna-storage: study {spec.name!r} keeps its trials in {manifest.optuna_storage}, "
                         f"and {where['optuna_storage']} holds none of them: give that storage "
                         "(STUDY_OPTUNA_STORAGE)")
    last = manifest.last_run
    alive = _driver_alive(last)
    if alive is None and not force:
        console.print(f"run {last.number} of study {escape(spec.name)} did not record its end and its driver ran "
                      f"on {escape(last.host)}: watching its heartbeat for {GONE_AFTER_SECONDS:g} s")
        gone = driver_gone(folder, last, GONE_AFTER_SECONDS)
        alive = None if gone is None else not gone
    if alive is False or (alive is None and force):
        return manifest
    if alive:
        where_it_runs = f" on {last.host}" + ("" if _on_this_machine(last) else ", whose heartbeat goes on")
    else:
        where_it_runs = (f" on {last.host}, as far as this machine can tell: it left no heartbeat; if that driver "
                         f"is gone, `study resume --force {spec.source}` continues the study")
    raise InputError(f"study {spec.name!r} is running (pid {last.pid}{where_it_runs}); stop it first with "
                     f"`study stop {spec.name}`")


def _on_this_machine(run) -> bool:
    """Whether `run`'s pid names a process here: the same boot and pid namespace (records made
    before those were kept: the same host name)."""
    return run.machine == this_machine() if run.machine else run.host == socket.gethostname()


def _driver_alive(run) -> bool | None:
    """Whether the driver of a run that says it is running still is: True or False when it ran on
    this machine, None when it ran on another (unknown)."""
    if run is None or run.state != "running":
        return False
    if not _on_this_machine(run):
        return None
    try:
        return psutil.Process(run.pid).create_time() <= run.started + 1  # not a later process with its pid
    except psutil.Error:
        return False


def run_study(space: Path, *, tracking_uri: str | None, optuna_storage: str | None, storage: str | None,
              address: str | None, dry_run: bool, resume: bool | None, console: Console, force: bool = False) -> dict:
    """Start the study of `space` (resume False), continue it (True), or whichever its storage calls
    for (None: `study run --resume`, the command of jobs that may run again)."""
    import ray

    from study import search
    from study.runner import check_gpus, keep_aws_keys_out_of_ray, local_gpus, start_ray, stop_on_sigterm
    from trainables.data import load_dataset

    started = time.perf_counter()
    keep_aws_keys_out_of_ray()
    stop_on_sigterm()
    spec = load_space(space)
    targets = settings.resolve(spec, tracking_uri=tracking_uri, optuna_storage=optuna_storage, storage=storage,
                               address=address)
    splits = load_dataset(spec.dataset)  # a dataset that cannot be had fails here, at once
    if not targets.address:
        check_gpus(spec, local_gpus())
    folder = StudyFolder(targets.storage, spec.name)
    if resume is None:
        resume = folder.exists()
    manifest = _check_study(spec, folder, targets, resume, force, console)
    groups = search.groups(spec)
    plan = {"study": spec.name, "resume": resume, "dataset": spec.dataset, "models": spec.models,
            "priors": spec.priors(), "groups": {g.label: g.budget for g in groups}, "trials": sum(g.budget for g in groups),
            **targets.public()}
    if dry_run:
        return {**plan, "dry_run": True}

    start_ray(targets, spec)
    try:
        return {**plan, "champions": _run(spec, targets, folder, manifest, splits, console),
                "seconds": round(time.perf_counter() - started, 1)}
    finally:
        ray.shutdown()


def _run(spec: StudySpec, targets, folder: StudyFolder, manifest: Manifest | None, splits, console) -> list[dict]:
    import ray

    from study.ledger import Ledger
    from study.registry import register_champions
    from study.runner import StudyRun, run_trials
    from study.tracking import StudyTracker, mirror_ended_trials

    if manifest is None:
        manifest = Manifest(name=spec.name, study_id=uuid.uuid4().hex, created=time.time(),
                            optuna_storage=targets.public()["optuna_storage"], fingerprint="", spec={})
    manifest.spec, manifest.fingerprint = spec_data(spec), fingerprint(spec)  # a resume may raise budgets
    run = folder.begin_run(manifest)
    heartbeat = Heartbeat(folder, run, on_superseded=lambda: _stop_superseded(spec, console))
    state = "failed"
    try:
        heartbeat.start()
        ledger = Ledger(targets.optuna_storage, spec)
        tracker = StudyTracker(targets.tracking_uri, spec.name, manifest.study_id, targets.artifact_location(spec.name))
        parent_id = tracker.parent_run({"dataset": spec.dataset, "models": ",".join(spec.models),
                                        "priors": ",".join(spec.priors()), **targets.public()})
        study = StudyRun(spec, targets, folder, run, ledger, tracker, parent_id, ray.put(splits))
        if mirror_ended_trials(tracker, parent_id, ledger):  # a crash had kept MLflow from hearing of them
            console.print("brought the MLflow runs of trials that had ended up to date")
        todo = len(ledger.resumable) + sum(max(0, g.budget - ledger.issued(g)) for g in ledger.groups)
        console.print(f"study [bold]{escape(spec.name)}[/bold] (run {run.number}): {todo} trials to run in "
                      f"{len(ledger.groups)} groups of {', '.join(spec.models)} x {', '.join(spec.priors())} on "
                      f"{escape(spec.dataset)}; tracking {escape(targets.public()['tracking_uri'])}, "
                      f"storage {escape(folder.uri)}")
        try:
            run_trials(study, console)
            # Ctrl-C and `study stop` end Tune's loop quietly: trials left without an end tell
            cut = study.stop_requested or bool(ledger.running) or not ledger.all_issued()
        except KeyboardInterrupt:  # before Tune took over Ctrl-C, or while it waited for tracking
            cut = True
        if cut:  # the parent run stays open: `study resume` continues it
            state = "stopped" if study.stop_requested else "interrupted"
            raise StudyInterrupted(_resume_hint(spec, "was stopped by `study stop`" if study.stop_requested
                                                else "was interrupted"))
        champions = register_champions(study, lambda msg: console.print(escape(msg)))
        if ledger.failures:
            tracker.end_run(parent_id, "FAILED")
            raise StudyFailed(_failures(spec, ledger))
        tracker.end_run(parent_id, "FINISHED")
        state = "finished"
    except KeyboardInterrupt:
        state = "interrupted"
        raise
    except (StudyInterrupted, StudyFailed):
        raise
    except Exception as e:
        why = _server_gone(spec, targets, e)
        if why is None:
            raise
        raise StudyFailed(why) from e
    finally:
        heartbeat.stop()
        try:
            folder.end_run(run, state)
        except Exception as e:  # noqa: BLE001 - the storage may be what failed: keep the first error
            console.print(f"could not record the end of run {run.number} in {folder.uri}: {escape(str(e))}")
    _print_champions(console, champions)
    return champions


def _stop_superseded(spec: StudySpec, console: Console) -> None:
    """Another driver has taken the study over (it took this one for gone): stop as on Ctrl-C,
    leaving every trial to it."""
    console.print(f"study {escape(spec.name)}: another driver has taken the study over (a newer run in its "
                  "record); stopping this one")
    os.kill(os.getpid(), signal.SIGINT)


def _resume_hint(spec: StudySpec, what: str) -> str:
    return f"study {spec.name!r} {what}; every unfinished trial continues from its checkpoint with `study resume {spec.source}`"


#: What an MLflow client's error says when the server did not answer (after its retries).
UNANSWERED = re.compile(r"Max retries exceeded|Connection refused|Connection aborted|ConnectionError|timed out|"
                        r"TEMPORARILY_UNAVAILABLE|error code 50[0234]|too many 50\d error responses")


def _server_gone(spec: StudySpec, targets, error: BaseException) -> str | None:
    """What to tell when the tracking server or the Optuna storage failed for longer than their
    clients wait (MLflow's retries, the ledger's OUTAGE_SECONDS): which one, and that `study resume`
    continues (the checkpoints and the ledger hold every trial's progress; a resume brings MLflow up
    to date). None for any other error. Tune re-raises an error of its callbacks as a TuneError of
    its traceback: the cause is looked for along the chain."""
    from mlflow.exceptions import MlflowException

    from study.ledger import LedgerUnreachable
    from study.tracking import TrackingError

    where, chain = targets.public(), []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    gone = next((e for e in chain if isinstance(e, (LedgerUnreachable, TrackingError, MlflowException))), None)
    if gone is None:
        return None
    if isinstance(gone, LedgerUnreachable):
        server = f"the Optuna storage {where['optuna_storage']}"
    else:
        server = f"the MLflow tracking {'store' if targets.local_tracking else 'server'} {where['tracking_uri']}"
    detail = str(gone)
    if isinstance(gone, LedgerUnreachable) or UNANSWERED.search(detail):
        what, when = "did not answer", "once it answers again"
    else:  # it answered, and refused (credentials, permissions, a bad request): waiting will not help
        what, when = "refused a call", "once that is put right"
    return (f"study {spec.name!r} stopped: {server} {what} ({detail[:400]}). Every trial's progress is in its "
            f"checkpoints and the Optuna storage: {when}, `study resume {spec.source}` continues the study and "
            "brings MLflow up to date")


def _failures(spec: StudySpec, ledger) -> str:
    lines = [f"{key}: {(why.strip().splitlines() or ['?'])[-1][:300]}" for key, why in ledger.failures.items()]
    return (f"study {spec.name!r}: {len(lines)} trial(s) failed after {spec.search.retries} retries "
            f"(the champions of the groups that finished are registered):\n  " + "\n  ".join(lines)
            + f"\n`study resume {spec.source}` runs them again from their last checkpoints")


def _print_champions(console: Console, rows: list[dict]) -> None:
    table = Table(title="champions", title_justify="left")
    for column in ("registered model", "trial", "epochs", "stopped", "val loss", "test LL", "protocol", "version",
                   "champion"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["trial"], str(r["epochs"]), r["stop_reason"].replace("_", " "),
                      f"{r['val_loss']:.2f}", "" if r["test_ll"] is None else f"{r['test_ll']:.2f}",
                      str(r["protocol"]), str(r["version"]), str(r["champion_version"]))
    console.print(table)


def stop(study: str, *, storage: str | None, wait: float) -> dict:
    """Ask a running study's driver to stop (it ends its trials resumably) and wait until it has."""
    folder = StudyFolder(settings.resolve_storage(storage), study)
    if not folder.exists():
        raise InputError(f"STUDY: no study {study!r} in {settings.without_userinfo(folder.storage)} "
                         "(give --storage or STUDY_STORAGE where it runs)")
    last = folder.read().last_run
    if last is None or last.state != "running":
        raise InputError(f"STUDY: study {study!r} is not running (its last run {last.state if last else 'never ran'})")
    if _driver_alive(last) is False:
        raise InputError(f"STUDY: study {study!r} is not running: its driver (pid {last.pid}) is gone; "
                         "`study resume` continues it")
    folder.request_stop()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        last = folder.read().last_run
        if last.state != "running":
            return {"study": study, "state": last.state, "run": last.number}
        time.sleep(1.0)
    raise RuntimeError(f"study {study!r}: its driver (pid {last.pid} on {last.host}) has not stopped within "
                       f"{wait:g} s; if it is no longer running, `study resume` continues the study")


def status(study: str | None, *, tracking_uri: str | None) -> dict:
    """The trials of a study (or the list of studies) from the tracking server."""
    from mlflow import MlflowClient

    from study.tracking import FAILURE, ROLE, STOP_REASON, STUDY, STUDY_ID

    uri = settings.require_existing_store(settings.resolve_tracking_uri(tracking_uri))
    client = MlflowClient(uri)
    if study is None:
        experiments = client.search_experiments(filter_string=f"tags.`{STUDY}` != ''")
        return {"tracking_uri": settings.without_userinfo(uri), "studies": sorted(e.name for e in experiments)}
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise InputError(f"no study {study!r} at {settings.without_userinfo(uri)}")
    parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = 'study'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    query = f"tags.`{ROLE}` = 'trial'"
    if parents and STUDY_ID in parents[0].data.tags:  # the latest study of that name
        query += f" and tags.`{STUDY_ID}` = '{parents[0].data.tags[STUDY_ID]}'"
    runs = client.search_runs([experiment.experiment_id], query, max_results=10000,
                              order_by=["attributes.start_time ASC"])
    trials = [{"trial": r.info.run_name, "group": f"{r.data.tags.get('model')}+{r.data.tags.get('prior')}",
               "state": r.info.status.lower(), "stopped": r.data.tags.get(STOP_REASON, ""),
               "epoch": int(r.data.metrics.get("epoch", 0)), "val_loss": r.data.metrics.get("val_loss"),
               "best_val_loss": r.data.metrics.get("best_val_loss"), "test_ll": r.data.metrics.get("test_ll"),
               "failure": r.data.tags.get(FAILURE)} for r in runs]
    return {"study": study, "tracking_uri": settings.without_userinfo(uri), "trials": trials}


def print_status(console: Console, result: dict) -> None:
    if "studies" in result:
        console.print("\n".join(result["studies"]) or "no studies")
        return
    table = Table(title=f"study {result['study']}", title_justify="left")
    for column in ("trial", "state", "stopped", "epochs", "val loss", "best", "test LL"):
        table.add_column(column)
    for t in result["trials"]:
        table.add_row(t["trial"], t["state"], t["stopped"].replace("_", " "), str(t["epoch"]),
                      *("" if t[k] is None else f"{t[k]:.2f}" for k in ("val_loss", "best_val_loss", "test_ll")))
    console.print(table)
