"""Tests of study.manifest: the study's record in its storage, what a resume may change, and the
stop request that `study stop` leaves for the driver."""
from __future__ import annotations

import pytest

from study.manifest import Manifest, StudyFolder, fingerprint, resume_problems, spec_data
from study.spec import parse_space


def _spec(**changes):
    data = {"name": "m", "dataset": "static_mnist", "models": ["vae", "hvae"],
            "space": {"lr": {"loguniform": [1e-4, 1e-3]},
                      "priors": {"standard": {}, "vampprior": {"K": [20], "trials": 3}}},
            "fixed": {"epochs": 10},
            "search": {"trials_per_group": 2, "seed": 0}}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section] = {**data.get(section, {}), field: value}
        else:
            data[section] = value
    return parse_space(data)


def test_the_same_spec_resumes():
    assert resume_problems(_spec(), _spec()) == []
    assert fingerprint(_spec()) == fingerprint(_spec()) != fingerprint(_spec(fixed__epochs=11))


@pytest.mark.parametrize("changes", [
    {"search__trials_per_group": 5},                                            # a larger budget
    {"space": {"lr": {"loguniform": [1e-4, 1e-3]},
               "priors": {"standard": {}, "vampprior": {"K": [20], "trials": 4}}}},  # a prior's budget
    {"search__max_concurrent": 3}, {"search__retries": 5},                      # how trials run
    {"resources": {"cpus": 2, "gpus": {"vae": 0.5, "hvae": 1}}},
])
def test_budgets_may_grow_and_run_settings_change(changes):
    assert resume_problems(_spec(), _spec(**changes)) == []


@pytest.mark.parametrize("changes, field", [
    ({"fixed__epochs": 20}, "fixed.epochs"),
    ({"search__seed": 1}, "search.seed"),
    ({"search__algorithm": "random"}, "search.algorithm"),
    ({"models": ["vae"]}, "models"),
    ({"space": {"lr": [1e-4], "priors": {"standard": {}, "vampprior": {"K": [20], "trials": 3}}}}, "space.lr"),
    ({"early_stopping": {"grace_period": 3, "reduction_factor": 3}}, "early_stopping.grace_period"),
    ({"evaluation": {"samples": 10}}, "evaluation.samples"),
])
def test_any_other_change_is_named(changes, field):
    problems = resume_problems(_spec(), _spec(**changes))
    assert problems and problems[0].startswith(f"{field}: changed since the study started")


@pytest.mark.parametrize("changes, field", [
    ({"search__trials_per_group": 1}, "search.trials_per_group"),
    ({"space": {"lr": {"loguniform": [1e-4, 1e-3]},
                "priors": {"standard": {}, "vampprior": {"K": [20], "trials": 2}}}}, "space.priors.vampprior.trials"),
])
def test_a_budget_cannot_shrink(changes, field):
    problems = resume_problems(_spec(), _spec(**changes))
    assert problems and all(p.startswith(f"{field}: the budget of") for p in problems)
    assert "can grow on resume but not shrink" in problems[0]


def test_folder_keeps_the_manifest_runs_and_stop_requests(tmp_path):
    folder = StudyFolder(str(tmp_path / "ray"), "m")
    assert not folder.exists() and not folder.stop_requested()
    manifest = Manifest(name="m", study_id="abc", created=1.0, optuna_storage="sqlite:///x.db",
                        fingerprint=fingerprint(_spec()), spec=spec_data(_spec()))
    folder.request_stop()  # a stale request from an earlier run...
    run = folder.begin_run(manifest)
    assert not folder.stop_requested()  # ...does not stop the new one
    assert folder.exists() and (tmp_path / "ray" / "m" / "study.json").is_file()
    assert run.number == 1 and folder.read().last_run.state == "running"
    assert folder.started_spec(folder.read()) == _spec()
    folder.request_stop()
    assert folder.stop_requested()
    folder.end_run(run, "stopped")
    assert folder.read().last_run.state == "stopped" and folder.read().last_run.ended is not None
    assert folder.begin_run(folder.read()).number == 2
    assert folder.experiment_name(run) == "run-1"
    assert not list((tmp_path / "ray" / "m").glob(".*tmp"))
