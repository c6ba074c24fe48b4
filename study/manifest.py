"""A study's record in its storage (a local folder or S3), beside Ray Tune's experiments:

    <storage>/<study>/study.json          the manifest: the spec the study started with (and its
                                          fingerprint), its id, and each run of the driver
    <storage>/<study>/stop-request.json   written by `study stop`, read by the running driver
    <storage>/<study>/driver.json         the running driver's heartbeat (study.heartbeat)
    <storage>/<study>/run-<n>/            Ray Tune's experiment of the n-th run (`run`, `resume`)

`study resume` compares the spec file with the manifest: a study resumes with the settings it
started with, except a larger budget (new trials are added), and the settings that do not change
results (`RUN_SETTINGS`: concurrency, retries, resources).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Literal

import pyarrow.fs as pafs
from pydantic import BaseModel

from study.spec import StudySpec, parse_space

FORMAT = "vamp-study/1"
#: Fields that may change on resume: they decide how trials run, not what they compute.
RUN_SETTINGS = ("search.max_concurrent", "search.retries", "resources.")
#: Fields that set a group's budget; on resume a budget may grow, never shrink.
BUDGET_FIELDS = ("search.trials_per_group",)


def this_machine() -> str:
    """Where a pid names one process: the boot and the pid namespace (a container's own), which a
    host name alone does not tell apart (two containers may share one)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:  # not Linux: the host name is all there is
        return socket.gethostname()


class Run(BaseModel):
    """One run of the study's driver (`study run` or a `study resume`)."""

    number: int
    started: float
    host: str
    pid: int
    machine: str = ""  # this_machine() of the driver ("" in records made before it was kept)
    state: Literal["running", "finished", "interrupted", "stopped", "failed"] = "running"
    ended: float | None = None


class Beat(BaseModel):
    """The newest heartbeat of a run's driver: `count` grows while it runs."""

    run: int
    host: str
    pid: int
    count: int


class Manifest(BaseModel):
    format: Literal["vamp-study/1"] = FORMAT
    name: str
    study_id: str  # tags the study's MLflow runs (a study of the same name made later is another)
    created: float
    optuna_storage: str  # where its ledger is (without credentials)
    fingerprint: str
    spec: dict
    runs: list[Run] = []

    @property
    def last_run(self) -> Run | None:
        return self.runs[-1] if self.runs else None


def spec_data(spec: StudySpec) -> dict:
    return spec.model_dump(mode="json")


def fingerprint(spec: StudySpec) -> str:
    return hashlib.sha256(json.dumps(spec_data(spec), sort_keys=True).encode()).hexdigest()


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def _budget_field(spec: StudySpec, group) -> str:
    return (f"space.priors.{group.prior}.trials" if spec.space.priors[group.prior].trials
            else "search.trials_per_group")


def resume_problems(started: StudySpec, now: StudySpec) -> list[str]:
    """What in `now` a resume of a study that started with `started` cannot accept, one line per
    field (no problems: the resume may go on)."""
    from study import search

    before, after = _flatten(spec_data(started)), _flatten(spec_data(now))
    problems = []
    for field in sorted(set(before) | set(after)):
        if (before.get(field) == after.get(field) or field.startswith(RUN_SETTINGS)
                or field in BUDGET_FIELDS or field.endswith(".trials")):
            continue
        problems.append(f"{field}: changed since the study started (was {json.dumps(before.get(field))}, "
                        f"now {json.dumps(after.get(field))}); a study resumes with the settings it started "
                        "with, except a larger budget, search.max_concurrent, search.retries and resources: "
                        "give the study another name to start a new one")
    if problems:  # other groups: budgets cannot be compared
        return problems
    budgets = {(g.model, g.prior): g.budget for g in search.groups(started)}
    for group in search.groups(now):
        if group.budget < budgets[(group.model, group.prior)]:
            problems.append(f"{_budget_field(now, group)}: the budget of {group.label} is "
                            f"{budgets[(group.model, group.prior)]} trials since the study started, and can "
                            f"grow on resume but not shrink (now {group.budget})")
    return problems


class StudyFolder:
    """The study's folder in its storage."""

    def __init__(self, storage: str, name: str):
        self.storage = storage.rstrip("/")
        self.name = name
        self.uri = f"{self.storage}/{name}"
        self.fs, self.path = pafs.FileSystem.from_uri(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _exists(self, name: str) -> bool:
        return self.fs.get_file_info(self._file(name)).type != pafs.FileType.NotFound

    def _read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._file(name)) as f:
            return f.read()

    def _write(self, name: str, data: bytes) -> None:
        self.fs.create_dir(self.path, recursive=True)
        if not self.local:  # an S3 object appears whole or not at all
            with self.fs.open_output_stream(self._file(name)) as f:
                f.write(data)
            return
        tmp = self._file(f".{name}.{os.getpid()}.tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self._file(name))

    # ---------------------------------------------------------------- the manifest

    def exists(self) -> bool:
        return self._exists("study.json")

    def read(self) -> Manifest:
        return Manifest.model_validate_json(self._read("study.json"))

    def write(self, manifest: Manifest) -> None:
        self._write("study.json", manifest.model_dump_json(indent=2).encode())

    def started_spec(self, manifest: Manifest) -> StudySpec:
        return parse_space(manifest.spec, f"{self.uri}/study.json")

    def begin_run(self, manifest: Manifest) -> Run:
        """Record a new run of the driver (this process) and clear any stale stop request."""
        run = Run(number=len(manifest.runs) + 1, started=time.time(), host=socket.gethostname(), pid=os.getpid(),
                  machine=this_machine())
        manifest.runs.append(run)
        self.clear_stop()
        self.write(manifest)
        return run

    def superseded(self, run: Run) -> bool:
        """Whether the record's last run is another driver's: one that took the study over
        (after deciding this driver was gone) or started it at the same time."""
        return self.read().last_run != run

    def end_run(self, run: Run, state: str) -> None:
        """Record how `run` ended, in the record as it is now: a driver that took over since keeps
        its own entry."""
        manifest = self.read()
        if manifest.runs[run.number - 1] == run:  # still as begin_run wrote it
            manifest.runs[run.number - 1] = run.model_copy(update={"state": state, "ended": time.time()})
            self.write(manifest)

    def experiment_name(self, run: Run) -> str:
        """Ray Tune's experiment of one run, under `uri`."""
        return f"run-{run.number}"

    # ---------------------------------------------------------------- stop requests

    def request_stop(self) -> None:
        self._write("stop-request.json", json.dumps({"requested": time.time(), "host": socket.gethostname(),
                                                     "pid": os.getpid()}).encode())

    def stop_requested(self) -> bool:
        return self._exists("stop-request.json")

    def clear_stop(self) -> None:
        if self.stop_requested():
            self.fs.delete_file(self._file("stop-request.json"))

    # ---------------------------------------------------------------- the driver's heartbeat

    def write_beat(self, beat: Beat) -> None:
        self._write("driver.json", beat.model_dump_json().encode())

    def read_beat(self) -> Beat | None:
        if not self._exists("driver.json"):
            return None
        return Beat.model_validate_json(self._read("driver.json"))
