"""What MLflow holds about one study, as plain data for the report: the study's parent run, every
trial's validation loss per epoch, and each group's champion (the registered version of
`<dataset>-<model>-<prior>` whose run is one of the study's trials).

Reads only. The study is found as `study status` finds it: the experiment named after it, its
latest parent run (tag `vamp.role` = study) and the trial runs with that parent's study id."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient

from study import settings
from study.tracking import ROLE, STOP_REASON, STUDY, STUDY_ID, TRIAL_ID
from trainables.errors import InputError


@dataclass
class Trial:
    """One trial run: its group, how it ended and its validation loss (beta = 1) per epoch."""

    key: str  # e.g. hvae-vampprior-003
    run_id: str
    run_name: str
    model: str
    prior: str
    stop_reason: str
    val_loss: list[tuple[int, float]]  # (epoch, loss), in order


@dataclass
class Champion:
    """A group's registered champion: the version and the tags registration gave it."""

    model: str
    prior: str
    registered_model: str
    version: str
    run_id: str
    tags: dict[str, str]


@dataclass
class StudyRecord:
    """Everything the report is made from."""

    study: str
    dataset: str
    tracking_uri: str  # without user:password@
    parent_run_id: str
    models: list[str]
    priors: list[str]
    trials: list[Trial] = field(default_factory=list)
    champions: list[Champion] = field(default_factory=list)

    def groups(self) -> list[tuple[str, str]]:
        """Every (model, prior) of the study, model by model as in the paper's table (the space's
        order), then any other that a trial has."""
        found = [(m, p) for m in self.models for p in self.priors]
        for t in self.trials:
            if (t.model, t.prior) not in found:
                found.append((t.model, t.prior))
        return found


def _split(text: str | None) -> list[str]:
    return [part for part in (text or "").split(",") if part]


def find_parent(client: MlflowClient, study: str, uri: str):
    """The study's latest parent run; InputError naming the study when there is none."""
    experiment = client.get_experiment_by_name(study)
    parents = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"tags.`{ROLE}` = 'study'", max_results=1,
        order_by=["attributes.start_time DESC"])
    if not parents:
        known = client.search_experiments(filter_string=f"tags.`{STUDY}` != ''")
        names = ", ".join(sorted(e.name for e in known)[:20]) or "none"
        raise InputError(f"STUDY: no study {study!r} at {settings.without_userinfo(uri)} (studies there: {names}; "
                         "`study status` lists them; give --tracking-uri or MLFLOW_TRACKING_URI where the study ran)")
    return parents[0]


def collect(client: MlflowClient, study: str, uri: str) -> StudyRecord:
    """The record of `study` in the tracking store at `uri` (see the module docstring)."""
    parent = find_parent(client, study, uri)
    params, tags = parent.data.params, parent.data.tags
    query = f"tags.`{ROLE}` = 'trial'"
    if STUDY_ID in tags:
        query += f" and tags.`{STUDY_ID}` = '{tags[STUDY_ID]}'"
    runs = client.search_runs([parent.info.experiment_id], query, max_results=10000,
                              order_by=["attributes.start_time ASC"])
    trials = [_trial(client, run) for run in runs]
    datasets = {r.data.tags.get("dataset") for r in runs} - {None}
    dataset = params.get("dataset") or (datasets.pop() if len(datasets) == 1 else "")
    record = StudyRecord(study, dataset, settings.without_userinfo(uri), parent.info.run_id,
                         _split(params.get("models")), _split(params.get("priors")), trials)
    record.champions = _champions(client, record, {r.info.run_id for r in runs})
    return record


def _trial(client: MlflowClient, run) -> Trial:
    tags = run.data.tags
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    return Trial(tags.get(TRIAL_ID, run.info.run_name), run.info.run_id, run.info.run_name, tags.get("model", "?"),
                 tags.get("prior", "?"), tags.get(STOP_REASON, ""), sorted(history.items()))


def _champions(client: MlflowClient, record: StudyRecord, run_ids: set[str]) -> list[Champion]:
    """Per group, the newest registered version made from one of this study's trials (a resumed
    study with a larger budget may have registered a better one after the first)."""
    found = []
    for model, prior in record.groups():
        name = f"{record.dataset}-{model}-{prior}"
        versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id in run_ids]
        if versions:
            newest = max(versions, key=lambda v: int(v.version))
            found.append(Champion(model, prior, name, str(newest.version), newest.run_id, dict(newest.tags)))
    return found
