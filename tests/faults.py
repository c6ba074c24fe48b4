"""What a study holds after a fault, counted against what Tune ran, and the small study and the
waits that the fault tests share (tests/test_faults.py, tests/test_faults_stack.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tests.helpers import Tracked, small_space

EPOCHS = 12

# --------------------------------------------------------------------------- the figures


def _filesystem(storage: str | Path):
    """pyarrow's filesystem and path of Ray storage: a local folder or a URI (s3://bucket/prefix)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(str(storage) if "://" in str(storage) else str(Path(storage).resolve()))


def tune_results(storage: str | Path, study_name: str) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Tune's result.json of every trial over every run of the study (trial key -> results in order),
    and how many checkpoints each trial has in storage (`run-*/<trial>/checkpoint_*/checkpoint.pt`)."""
    from pyarrow import fs

    filesystem, root = _filesystem(storage)
    found = filesystem.get_file_info(fs.FileSelector(f"{root}/{study_name}", recursive=True, allow_not_found=True))
    results: dict[str, list[dict]] = {}
    checkpoints: dict[str, int] = {}
    files = [f.path[len(root) + len(study_name) + 2:].split("/") for f in found if f.type == fs.FileType.File]
    for parts in sorted((p for p in files if p[0].startswith("run-")), key=lambda p: int(p[0][4:])):
        if len(parts) == 3 and parts[2] == "result.json":
            with filesystem.open_input_stream(f"{root}/{study_name}/{'/'.join(parts)}") as f:
                lines = f.read().decode().splitlines()
            results.setdefault(parts[1], []).extend(json.loads(line) for line in lines if line.strip())
        elif len(parts) == 4 and parts[2].startswith("checkpoint_") and parts[3] == "checkpoint.pt":
            checkpoints[parts[1]] = checkpoints.get(parts[1], 0) + 1
    return results, checkpoints


def _checkpoint_exists(uri: str) -> bool:
    from pyarrow import fs

    from trainables.tune_trainable import CHECKPOINT_FILE

    filesystem, path = _filesystem(uri)
    return filesystem.get_file_info(f"{path}/{CHECKPOINT_FILE}").type == fs.FileType.File


def fault_figures(tracking_uri: str, study_name: str, storage: str | Path, optuna_storage: str | None = None) -> dict:
    """What a study holds after a fault, counted against what Tune ran (its result.json in `storage`,
    a folder or an s3:// URI that this process can read):

    - trials: trials Tune ran or MLflow has a run of; completed: those whose runs are all FINISHED
    - epochs_expected: every epoch up to the last one each trial reported to Tune;
      epochs_logged: `train_loss` steps in MLflow; lost_epochs, doubled_epochs: expected steps
      missing, steps logged more than once
    - duplicate_runs: MLflow runs beyond one per trial key
    - missing_artifacts: FINISHED runs without `model/`
    - missing_checkpoints: trials without a checkpoint in storage, or, given the Optuna storage,
      whose newest checkpoint named by the ledger (what `study resume` continues from) is not there
    - champions: registered versions from the study's runs; duplicate_versions: versions beyond one
      per run
    """
    tracked = Tracked(tracking_uri, study_name)
    results, checkpoints = tune_results(storage, study_name)
    runs: dict[str, list] = {}
    for run in tracked.trials:
        runs.setdefault(run.data.tags["vamp.trial_id"], []).append(run)
    keys = sorted(set(results) | set(runs))
    logged = expected = lost = doubled = 0
    for key in keys:
        last = max((int(r.get("epoch", 0)) for r in results.get(key, [])), default=0)
        steps = [step for run in runs.get(key, []) for step in tracked.epochs(run)]
        expected += last
        logged += len(steps)
        lost += len(set(range(1, last + 1)) - set(steps))
        doubled += len(steps) - len(set(steps))
    finished = [run for key in keys for run in runs.get(key, []) if run.info.status == "FINISHED"]
    if optuna_storage is None:
        missing_checkpoints = sum(1 for key in results if not checkpoints.get(key))
    else:
        from tests.helpers import optuna_groups

        ledger = {t.user_attrs.get("trial"): t.user_attrs.get("checkpoint")
                  for trials in optuna_groups(optuna_storage, study_name).values() for t in trials}
        missing_checkpoints = sum(1 for key in results if not ledger.get(key) or not _checkpoint_exists(ledger[key]))
    versions = [v for run in tracked.trials
                for v in tracked.client.search_model_versions(f"run_id = '{run.info.run_id}'")]
    return {
        "trials": len(keys),
        "completed": sum(1 for key in keys if runs.get(key) and all(r.info.status == "FINISHED" for r in runs[key])),
        "epochs_logged": logged, "epochs_expected": expected, "lost_epochs": lost, "doubled_epochs": doubled,
        "duplicate_runs": sum(len(r) - 1 for r in runs.values()),
        "missing_artifacts": sum(1 for r in finished if not tracked.client.list_artifacts(r.info.run_id, "model")),
        "missing_checkpoints": missing_checkpoints,
        "champions": len(versions), "duplicate_versions": len(versions) - len({v.run_id for v in versions}),
    }


def report(fault: str, figures: dict, exits: list[int], started: float) -> None:
    """One line of the table in docs/reliability.md (pytest -s shows it)."""
    print("FAULT-FIGURES " + json.dumps({"fault": fault, **figures, "exit": " then ".join(map(str, exits)),
                                         "wall_s": round(time.monotonic() - started)}), flush=True)


def assert_nothing_lost(figures: dict, trials: int, champions: int) -> None:
    """Every trial completed with every epoch logged once, in one run, with its model and checkpoint."""
    assert figures["trials"] == figures["completed"] == trials, figures
    assert figures["epochs_logged"] == figures["epochs_expected"], figures
    zeros = ("lost_epochs", "doubled_epochs", "duplicate_runs", "missing_artifacts", "missing_checkpoints",
             "duplicate_versions")
    assert {k: figures[k] for k in zeros} == dict.fromkeys(zeros, 0), figures
    assert figures["champions"] == champions, figures



def fault_space(folder: Path, name: str, **overrides) -> Path:
    """Two groups (vae with the standard prior and the VampPrior) of two trials, EPOCHS epochs each,
    two trials at a time on two CPUs; no early stopping: every trial trains to its last epoch."""
    settings = {"fixed": {"epochs": EPOCHS, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 1000},
                "early_stopping": {"grace_period": EPOCHS, "reduction_factor": 2}, **overrides}
    return small_space(folder, name=name, **settings)


def wait_for_epochs(storage: str | Path, name: str, process, epochs: int = 2, node: str | None = None,
                    timeout: float = 300) -> str:
    """Until a trial (running on `node`, if given) has reported `epochs` epochs to Tune while the
    study runs (read from Tune's result.json, so no server is asked); returns its key."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the study ended (exit {process.returncode}) before the fault"
        try:
            results, _ = tune_results(storage, name)
        except (OSError, json.JSONDecodeError):  # a line being written
            results = {}
        for key, lines in results.items():
            if len(lines) >= epochs and (node is None or lines[-1].get("node_id") == node):
                return key
        time.sleep(0.2)
    raise AssertionError(f"no trial reported {epochs} epochs in time")


def finish(process, log: Path, timeout: float = 300) -> tuple[int, str]:
    """The study process's exit code and its log, once it has ended (killed after `timeout`)."""
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return code, log.read_text()
