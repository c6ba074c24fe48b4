"""`study run` on the embedded default (local Ray, MLflow on SQLite, local storage), as a user
runs it: the quickstart end to end, bad input, a diverging trial."""
import math
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, Tracked, json_out, optuna_groups, overlap, result_lines, small_space, study


def tracking(home) -> str:
    return f"sqlite:///{home['STUDY_HOME']}/mlflow.db"


def test_quickstart_end_to_end(home, tmp_path):
    space = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    result = json_out(study("run", REPO / "search_spaces" / "quickstart.yaml", "--json", env=home))
    groups = len(space["models"]) * len(space["space"]["priors"])
    trials_expected = space["search"]["trials_per_group"] * groups
    assert result["trials"] == trials_expected and len(result["groups"]) == groups

    t = Tracked(tracking(home), "quickstart")
    assert len(t.parents) == 1 and t.parents[0].info.status == "FINISHED"
    assert len(t.trials) == trials_expected
    parent_id = t.parents[0].info.run_id
    for run in t.trials:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED" and tags["vamp.stop_reason"] in ("max_epochs", "early_stopping", "asha")
        assert {tags["dataset"], tags["model"], tags["prior"]} <= {"static_mnist", "vae", "hvae", "standard", "vampprior"}
        assert run.info.run_name.startswith(f"{tags['model']}-{tags['prior']}-")
        assert ("K" in params) == (tags["prior"] == "vampprior")
        assert float(params["lr"]) > 0 and params["epochs"] == str(space["fixed"]["epochs"]) and int(params["seed"]) >= 0
        epochs = t.epochs(run)
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 1  # once per epoch, in order
        assert {"val_loss", "val_re", "val_kl", "beta", "epoch_seconds"} <= set(run.data.metrics)
        files = {a.path for a in t.client.list_artifacts(run.info.run_id, "model")}
        assert files == {"model/weights.pt", "model/config.json"}  # every trial's best weights
    # both models train at the same time (2 CPUs, one trial each)
    assert any(overlap(a, b) for a in t.trials for b in t.trials
               if a.data.tags["model"] == "vae" and b.data.tags["model"] == "hvae")
    # every group got exactly its budget, each in its own Optuna study
    studies = optuna_groups(f"sqlite:///{home['STUDY_HOME']}/optuna.db", "quickstart")
    assert {label: len(trials) for label, trials in studies.items()} == {
        label: space["search"]["trials_per_group"] for label in result["groups"]}

    # one registered champion per (model, prior) group, a trial that trained to its end, scored, with
    # its protocol (reduced: S = 500 on 500 test images, 2000 training images)
    assert len(result["champions"]) == groups
    for group in result["champions"]:
        versions = t.versions(group["name"])
        assert len(versions) == 1
        champion = t.champion(group["name"])
        assert champion.version == versions[0].version
        tags = champion.tags
        assert tags["stop_reason"] in ("max_epochs", "early_stopping") and group["stop_reason"] == tags["stop_reason"]
        assert (tags["protocol"], tags["protocol.samples"], tags["protocol.test_size"],
                tags["protocol.train_size"]) == ("reduced", "500", "500", "2000")
        assert int(tags["epochs"]) == group["epochs"] >= int(tags["best_epoch"]) >= 1
        run = t.client.get_run(champion.run_id)
        assert run.data.tags["vamp.champion"] == "true"
        assert run.data.metrics["test_ll"] >= run.data.metrics["test_elbo"]
        assert math.isclose(float(champion.tags["test_ll"]), run.data.metrics["test_ll"], rel_tol=1e-6)
        assert {a.path for a in t.client.list_artifacts(run.info.run_id)} >= {"model", "figures"}

    # pull the champion and score it: the same number as logged
    name = result["champions"][-1]["name"]
    out = tmp_path / "pulled"
    json_out(study("pull", f"{name}@champion", "--out", out, "--json", env=home))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.pt"]
    scored = json_out(study("score", out, "--samples", space["evaluation"]["samples"], "--test-limit",
                            space["evaluation"]["test_limit"], "--json", env=home))
    assert math.isclose(scored["test_ll"], float(t.champion(name).tags["test_ll"]), rel_tol=1e-6)

    # status from another terminal
    status = json_out(study("status", "quickstart", "--json", env=home))
    assert len(status["trials"]) == trials_expected
    assert all(tr["state"] == "finished" and tr["epoch"] >= 1 and tr["stopped"] for tr in status["trials"])
    assert "quickstart" in json_out(study("status", "--json", env=home))["studies"]

    # a second `run` of the same study refuses (resume is the way) and changes nothing
    again = study("run", REPO / "search_spaces" / "quickstart.yaml", env=home)
    assert again.returncode == 2 and "already exists" in again.stderr and "study resume" in again.stderr
    assert len(Tracked(tracking(home), "quickstart").trials) == trials_expected


@pytest.mark.parametrize("bad", sorted((REPO / "tests" / "study" / "spaces" / "bad").glob("*.yaml"))[:6],
                         ids=lambda p: p.stem)
def test_bad_space_exits_2_and_creates_nothing(home, bad):
    r = study("run", bad, env=home)
    assert r.returncode == 2, r.stderr
    assert str(bad) in r.stderr
    assert not Path(home["STUDY_HOME"]).exists(), list(Path(home["STUDY_HOME"]).rglob("*"))


def test_gpus_on_a_machine_without_them_exit_2(home, tmp_path):
    space = small_space(tmp_path, resources={"cpus": 1, "gpus": 0.25})
    r = study("run", space, env=home)
    assert r.returncode == 2
    assert "resources.gpus" in r.stderr and "has 0" in r.stderr
    assert not Path(home["STUDY_HOME"]).exists()


def test_a_dataset_that_cannot_be_fetched_fails_at_once(home, tmp_path):
    space = small_space(tmp_path, dataset="omniglot")
    r = study("run", space, env={**home, "STUDY_CACHE_DIR": str(tmp_path / "empty-cache")}, timeout=120)
    assert r.returncode == 2 and "omniglot/chardata.mat" in r.stderr
    assert not Path(home["STUDY_HOME"]).exists() and not (tmp_path / "empty-cache").exists()


def test_dry_run_starts_nothing(home, tmp_path):
    result = json_out(study("run", small_space(tmp_path), "--dry-run", "--json", env=home))
    assert result["dry_run"] and result["trials"] == 4 and result["groups"] == {"vae+standard": 2, "vae+vampprior": 2}
    assert not Path(home["STUDY_HOME"]).exists()


def test_a_diverging_trial_is_a_result_not_retried_and_the_study_goes_on(home, tmp_path):
    """Also: search.max_concurrent caps the trials that run at once."""
    # lr 1e5 makes the loss NaN in the first epoch; with this seed each group draws it once
    space = small_space(tmp_path, name="diverge", space={"lr": [1.0e5, 5.0e-4],
                                                         "priors": {"standard": {}, "vampprior": {"K": [20]}}},
                        search={"algorithm": "random", "seed": 3, "trials_per_group": 3, "retries": 2,
                                "max_concurrent": 1})
    result = json_out(study("run", space, "--json", env=home))
    t = Tracked(tracking(home), "diverge")
    assert len(t.trials) == 6 and all(r.info.status == "FINISHED" for r in t.trials)
    assert not any(overlap(a, b) for a in t.trials for b in t.trials if a is not b)  # max_concurrent: 1
    diverged = [r for r in t.trials if r.data.tags["vamp.stop_reason"] == "diverged"]
    assert diverged and len(diverged) < len(t.trials)
    for run in diverged:
        assert run.data.params["lr"] == "100000.0"
        assert re.search(r"loss is (nan|inf) at epoch 1", run.data.tags["vamp.failure"])
    lines = result_lines(Path(home["STUDY_HOME"]) / "ray", "diverge")
    for run in diverged:  # ended at once and never retried
        assert len(lines[run.data.tags["vamp.trial_id"]]) == 1
    champions = {c["trial"] for c in result["champions"]}
    assert champions and not champions & {r.data.tags["vamp.trial_id"] for r in diverged}
    studies = optuna_groups(f"sqlite:///{home['STUDY_HOME']}/optuna.db", "diverge")
    values = [t.value for trials in studies.values() for t in trials if t.user_attrs["stop_reason"] == "diverged"]
    assert len(values) == len(diverged) and all(v == math.inf for v in values)
