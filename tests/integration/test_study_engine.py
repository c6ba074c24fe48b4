"""The study engine on a real local Ray cluster with 4 CPUs, real MLflow and a real Optuna storage:
every model's trials share the cluster, each (model, prior) group gets its budget, its own search
and its own early stopping, champions are trials that finished, and a reduced-protocol study
never takes the `champion` alias from a full-protocol version. Plus a worker killed mid-trial."""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import (Tracked, embedded_env, json_out, optuna_groups, overlap, result_lines, small_space, study,
                                 study_process)

BUDGET = 3
EPOCHS = 4


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def engine_study(cluster, data_cache, tmp_path_factory):
    """Two models x two priors, three trials per group, at one high learning rate, so that the
    groups' losses differ by far more than the trials of one group do; a full-protocol version of
    static_mnist-vae-standard is in the registry before the study starts."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("engine")
    env = embedded_env(folder, data_cache)
    tracking_uri = f"sqlite:///{folder}/studies/mlflow.db"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model("static_mnist-vae-standard")
    full = client.create_model_version("static_mnist-vae-standard", source=str(folder / "full-model"), tags={
        "protocol": "full", "protocol.samples": "5000", "protocol.test_size": "10000",
        "protocol.train_size": "50000", "test_ll": "-1000.0"})  # worse than any champion here
    client.set_registered_model_alias("static_mnist-vae-standard", "champion", full.version)

    space = small_space(folder, name="engine", models=["vae", "hvae"],
                        space={"lr": [1.0e-3], "priors": {"standard": {}, "vampprior": {"K": [20]}}},
                        fixed={"epochs": EPOCHS, "warmup": 1, "patience": 0, "hidden": 64, "train_limit": 500},
                        search={"algorithm": "tpe", "seed": 0, "trials_per_group": BUDGET},
                        early_stopping={"grace_period": 1, "reduction_factor": 3})
    result = json_out(study("run", space, "--address", cluster.address, "--json", env=env))
    return {"result": result, "env": env, "folder": folder, "space": space,
            "tracked": Tracked(tracking_uri, "engine"),
            "groups": optuna_groups(f"sqlite:///{folder}/studies/optuna.db", "engine"),
            "full_version": full.version}


def test_every_model_trains_at_once_on_the_cluster(engine_study):
    t = engine_study["tracked"]
    vae = [r for r in t.trials if r.data.tags["model"] == "vae"]
    hvae = [r for r in t.trials if r.data.tags["model"] == "hvae"]
    assert any(overlap(a, b) for a in vae for b in hvae)
    assert len(t.trials) == 4 * BUDGET and all(r.info.status == "FINISHED" for r in t.trials)


def test_each_group_has_its_budget_in_its_own_optuna_study(engine_study):
    groups = engine_study["groups"]
    assert sorted(groups) == ["hvae+standard", "hvae+vampprior", "vae+standard", "vae+vampprior"]
    for label, trials in groups.items():
        assert len(trials) == BUDGET
        assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
        for t in trials:
            assert t.user_attrs["trial"].startswith(label.replace("+", "-"))
            if t.state.name == "COMPLETE":
                assert t.user_attrs["stop_reason"] == "max_epochs" and t.value == min(t.intermediate_values.values())
            else:
                assert t.user_attrs["stop_reason"] == "asha" and len(t.intermediate_values) < EPOCHS
    assert any(t.state.name == "PRUNED" for trials in groups.values() for t in trials)  # early stopping worked


def test_early_stopping_never_stops_a_group_because_of_another(engine_study):
    groups = engine_study["groups"]
    first_epoch = {label: [t.intermediate_values[1] for t in trials] for label, trials in groups.items()}
    worst = max(first_epoch, key=lambda label: min(first_epoch[label]))
    best = min(first_epoch, key=lambda label: min(first_epoch[label]))
    # constructed so: a study-wide ASHA keeping the best third at epoch 1 would stop every trial of `worst`
    assert min(first_epoch[worst]) > sorted(v for values in first_epoch.values() for v in values)[4 * BUDGET // 3]
    assert min(first_epoch[worst]) > max(first_epoch[best])
    for label, trials in groups.items():  # yet every group trains its best trial to the end
        assert any(t.user_attrs["stop_reason"] == "max_epochs" and len(t.intermediate_values) == EPOCHS
                   for t in trials), label


def test_champions_are_trials_that_finished_with_their_protocol(engine_study):
    result, t = engine_study["result"], engine_study["tracked"]
    assert len(result["champions"]) == 4
    for champion in result["champions"]:
        assert champion["stop_reason"] == "max_epochs" and champion["epochs"] == EPOCHS
        run = t.trial(champion["trial"])
        assert run.data.tags["vamp.stop_reason"] == "max_epochs"
        (version,) = [v for v in t.versions(champion["name"]) if v.run_id == run.info.run_id]
        assert version.tags["stop_reason"] == "max_epochs" and version.tags["protocol"] == "reduced"
        assert (version.tags["protocol.samples"], version.tags["protocol.test_size"],
                version.tags["protocol.train_size"]) == ("20", "50", "500")
        assert version.tags["epochs"] == str(EPOCHS) and 1 <= int(version.tags["best_epoch"]) <= EPOCHS
    asha = {r.data.tags["vamp.trial_id"] for r in t.trials if r.data.tags["vamp.stop_reason"] == "asha"}
    assert asha and not asha & {c["trial"] for c in result["champions"]}


def test_a_reduced_protocol_never_takes_the_alias_from_a_full_one(engine_study):
    t = engine_study["tracked"]
    assert t.champion("static_mnist-vae-standard").version == engine_study["full_version"]
    (new,) = [v for v in t.versions("static_mnist-vae-standard") if v.version != engine_study["full_version"]]
    assert new.tags["protocol"] == "reduced" and float(new.tags["test_ll"]) > -1000.0  # better, yet not champion
    for name in ("static_mnist-hvae-standard", "static_mnist-vae-vampprior", "static_mnist-hvae-vampprior"):
        assert t.champion(name).tags["protocol"] == "reduced"  # nothing else held those aliases


def test_a_trial_is_reproduced_by_study_train_from_its_params(engine_study, tmp_path):
    t = engine_study["tracked"]
    champion = engine_study["result"]["champions"][-1]
    params = t.trial(champion["trial"]).data.params
    flags = ["dataset", "model", "prior", "K", "lr", "epochs", "warmup", "patience", "batch_size", "hidden",
             "z1_size", "z2_size", "seed", "pseudoinputs", "train_limit", "test_limit", "samples"]
    args = [part for name in flags if name in params
            for part in (f"--{name}" if name == "K" else f"--{name.replace('_', '-')}", params[name])]
    trained = json_out(study("train", *args, "--device", "cpu", "--no-figures", "--output", tmp_path / "again",
                             "--json", env=engine_study["env"]))
    assert math.isclose(trained["val_loss"], champion["val_loss"], rel_tol=1e-4)
    assert math.isclose(trained["test_ll"], float(t.champion(champion["name"]).tags["test_ll"]), rel_tol=1e-4)


def _trial_workers() -> list[psutil.Process]:
    """The processes that run Tune function trainables (Ray names them ray::ImplicitFunc...)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::ImplicitFunc"):
            found.append(process)
    return found


def _kill_the_worker_mid_trial(cluster, data_cache, tmp_path, name: str, retries: int):
    """Run a one-trial study of 8 epochs, SIGKILL its worker after epoch 3; returns the study's
    exit code, its env, its space file and its log."""
    env = embedded_env(tmp_path, data_cache)
    space = small_space(tmp_path, name=name, space={"lr": [5.0e-4], "priors": {"standard": {}}},
                        fixed={"epochs": 8, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 1000},
                        search={"seed": 0, "trials_per_group": 1, "retries": retries})
    tracking_uri = f"sqlite:///{tmp_path}/studies/mlflow.db"
    log = tmp_path / f"{name}.log"
    process = study_process("run", space, "--address", cluster.address, env=env, log=log)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                tracked = Tracked(tracking_uri, name)
                if tracked.trials and len(tracked.epochs(tracked.trials[0])) >= 3:
                    break
            except Exception:  # noqa: BLE001 - the store or the run may not exist yet
                pass
            time.sleep(0.5)
        workers = _trial_workers()
        assert len(workers) == 1, workers
        workers[0].send_signal(signal.SIGKILL)
        code = process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    return code, env, space, log.read_text()


def test_a_worker_killed_mid_trial_continues_from_its_checkpoint(cluster, data_cache, tmp_path):
    code, env, _, log = _kill_the_worker_mid_trial(cluster, data_cache, tmp_path, "killed", retries=2)
    assert code == 0, log[-3000:]
    t = Tracked(f"sqlite:///{tmp_path}/studies/mlflow.db", "killed")
    (run,) = t.trials
    assert run.info.status == "FINISHED" and run.data.tags["vamp.stop_reason"] == "max_epochs"
    assert t.epochs(run) == list(range(1, 9))  # every epoch once, in one run
    (results,) = result_lines(Path(env["STUDY_HOME"]) / "ray", "killed").values()
    restarts = [r for r in results[1:] if r["iterations_since_restore"] == 1]
    assert len(restarts) == 1, results  # Tune restarted the trial once...
    assert restarts[0]["epoch"] >= 3  # ...from its checkpoint, not from epoch 1
    assert results[-1]["epoch"] == 8 and results[-1]["stop_reason"] == "max_epochs"


def test_a_trial_that_fails_after_its_retries_is_named_and_resumed(cluster, data_cache, tmp_path):
    code, env, space, log = _kill_the_worker_mid_trial(cluster, data_cache, tmp_path, "failing", retries=0)
    assert code == 1, log[-3000:]
    assert "1 trial(s) failed after 0 retries" in log and "vae-standard-000: " in log and "study resume" in log
    t = Tracked(f"sqlite:///{tmp_path}/studies/mlflow.db", "failing")
    (run,) = t.trials
    assert run.info.status == "FAILED" and run.data.tags["vamp.stop_reason"] == "failed"
    assert t.parents[0].info.status == "FAILED"

    result = json_out(study("resume", space, "--address", cluster.address, "--json", env=env))
    t = Tracked(f"sqlite:///{tmp_path}/studies/mlflow.db", "failing")
    (run,) = t.trials  # the same run, continued
    assert run.info.status == "FINISHED" and run.data.tags["vamp.stop_reason"] == "max_epochs"
    assert t.epochs(run) == list(range(1, 9)) and t.parents[0].info.status == "FINISHED"
    assert "vamp.failure" not in run.data.tags
    assert [c["trial"] for c in result["champions"]] == ["vae-standard-000"]
    runs = result_lines(Path(env["STUDY_HOME"]) / "ray", "failing")["vae-standard-000"]
    assert runs[0]["epoch"] == 1 and min(r["epoch"] for r in runs[1:]) > 1  # resumed from its checkpoint
