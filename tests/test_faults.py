"""Faults while a study runs, on real servers and a real Ray: the MLflow tracking server restarted,
PostgreSQL (MLflow's store and the Optuna ledger) restarted, a worker node of a two-node cluster
removed while it runs a trial (with retries left, and with none), and the tracking server gone for
longer than the client's retry budget (and, for the ledger's storage alone, PostgreSQL gone for
longer than the ledger waits). After each, `fault_figures` counts what the study holds against
what Tune ran: nothing may be lost, doubled or duplicated.

Each test prints its figures as one line `FAULT-FIGURES {json}`, so that
`pytest tests/test_faults.py -s -p no:cacheprovider | grep FAULT-FIGURES` gives the table of
docs/reliability.md.

The servers are this module's own (PostgreSQL; MLflow with its store there and its artifacts in a
local folder), not the session's of tests/integration: these tests stop and restart them. Ray
storage is a local folder per test (S3 and the whole stack: tests/test_faults_stack.py; the
figures: tests/faults.py)."""
from __future__ import annotations

import secrets
import time
from types import SimpleNamespace

import pytest

from study.stack import MlflowServer, PostgresServer, free_port, write_private
from tests.faults import (EPOCHS, assert_nothing_lost, fault_figures, fault_space, finish, report, tune_results,
                          wait_for_epochs)
from tests.helpers import Tracked, embedded_env, small_space, study, study_process



@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """This module's PostgreSQL (MLflow's store and the Optuna storage) and MLflow tracking server
    (artifacts in a local folder), on fixed ports so that a restart keeps its address."""
    folder = tmp_path_factory.mktemp("fault-servers")
    postgres = PostgresServer(folder / "postgres")
    mlflow = MlflowServer(postgres.sqlalchemy_uri, str(folder / "artifacts"), port=free_port(),
                          folder=folder / "mlflow")
    try:
        postgres.start()
        mlflow.start()
        yield SimpleNamespace(postgres=postgres, mlflow=mlflow)
    finally:
        mlflow.stop()
        postgres.remove()


@pytest.fixture
def stack(servers, tmp_path, data_cache):
    """The module's servers, running (a failed test may have left one stopped), and the environment
    of a study that tracks to them, keeps its ledger in PostgreSQL and its Ray storage in tmp_path."""
    servers.postgres.start()
    servers.mlflow.start()
    storage = tmp_path / "ray"
    env = {**embedded_env(tmp_path, data_cache), "MLFLOW_TRACKING_URI": servers.mlflow.tracking_uri,
           "STUDY_OPTUNA_STORAGE": servers.postgres.database_uri("optuna"), "STUDY_STORAGE": str(storage)}
    return SimpleNamespace(postgres=servers.postgres, mlflow=servers.mlflow, env=env, storage=storage,
                           folder=tmp_path)



# --------------------------------------------------------------------------- servers restarted


@pytest.mark.parametrize("server", ["mlflow", "postgres"])
def test_a_server_restarted_mid_study_loses_nothing(server, stack):
    """The tracking server, or the PostgreSQL that holds MLflow's store and the Optuna ledger, is
    stopped while trials train and started again on the same port a few seconds later: the study
    rides it out (MLflow's client retries, the ledger's storage retries) and finishes."""
    started = time.monotonic()
    name = f"restart-{server}"
    space = fault_space(stack.folder, name)
    log = stack.folder / "study.log"
    # with this backoff MLflow's client retries a call for about 2 minutes (4 with its default):
    # far longer than the restart, and the backlog is written sooner once the server is back
    env = {**stack.env, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    process = study_process("run", space, env=env, log=log)
    try:
        wait_for_epochs(stack.storage, name, process)
        target = getattr(stack, server)
        target.stop()
        time.sleep(5)  # trials go on reporting; their tracking and ledger calls meet a closed port
        assert process.poll() is None
        target.start()
    finally:
        code, text = finish(process, log)
    assert code == 0, text[-4000:]
    figures = fault_figures(stack.mlflow.tracking_uri, name, stack.storage, stack.postgres.database_uri("optuna"))
    report(f"{'MLflow tracking server' if server == 'mlflow' else 'PostgreSQL'} restarted mid-study", figures,
           [code], started)
    assert_nothing_lost(figures, trials=4, champions=2)


def test_the_ledger_waits_for_its_database_and_names_it_when_it_stays_gone(stack, monkeypatch):
    """The ledger's storage (study.ledger.PatientStorage) with PostgreSQL stopped: started again
    within the ledger's wait, the call goes through; gone for longer (OUTAGE_SECONDS, lowered here
    to 2 s), it fails with LedgerUnreachable, which names the storage but not its password."""
    import threading

    from study import ledger

    import optuna

    storage = ledger.open_storage(stack.postgres.database_uri("optuna"))
    study = optuna.create_study(storage=storage, study_name=f"patience-{time.time_ns()}")  # behind Optuna's cache
    for ask in (storage.get_all_studies, study.ask, study.get_trials):
        stack.postgres.stop()
        restart = threading.Timer(3.0, stack.postgres.start)
        restart.start()
        asked = time.monotonic()
        try:
            ask()
        finally:
            restart.join()
        assert time.monotonic() - asked > 2.5, ask  # it waited for the restart
    assert len(study.get_trials()) == 1
    monkeypatch.setattr(ledger, "OUTAGE_SECONDS", 2.0)
    stack.postgres.stop()
    try:
        with pytest.raises(ledger.LedgerUnreachable) as gone:
            storage.get_all_studies()
    finally:
        stack.postgres.start()
    message = str(gone.value)
    assert f"127.0.0.1:{stack.postgres.port}/optuna" in message and stack.postgres.password not in message, message
    # a database that answers and refuses is not waited for
    monkeypatch.setattr(ledger, "OUTAGE_SECONDS", 120.0)
    asked = time.monotonic()
    with pytest.raises(ledger.LedgerUnreachable, match="password authentication failed"):
        ledger.open_storage(stack.postgres.database_uri("optuna").replace(stack.postgres.password, "wrong"))
    assert time.monotonic() - asked < 30


def test_tracking_server_gone_past_its_retries_stops_the_study_and_resume_completes_it(stack):
    """The tracking server stops and stays down for longer than the client's retry budget (lowered
    here to seconds): the study stops at once rather than train untracked, says which server failed
    and how to resume, and exits 1; `study resume` with the server back completes it."""
    started = time.monotonic()
    name = "tracking-gone"
    space = fault_space(stack.folder, name)
    env = {**stack.env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    log = stack.folder / "study.log"
    process = study_process("run", space, env=env, log=log)
    try:
        wait_for_epochs(stack.storage, name, process)
        stack.mlflow.stop()
    finally:
        code, text = finish(process, log, timeout=180)
    assert code == 1, text[-4000:]
    assert stack.mlflow.tracking_uri in text and f"study resume {space}" in text, text[-4000:]
    assert f"the MLflow tracking server {stack.mlflow.tracking_uri} did not answer" in text, text[-4000:]
    results, _ = tune_results(stack.storage, name)
    trained = {key: max(r["epoch"] for r in lines) for key, lines in results.items()}
    assert len(trained) < 4 or min(trained.values()) < EPOCHS, trained  # it stopped, it did not train on

    stack.mlflow.start()
    resumed = study("resume", space, env=stack.env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    figures = fault_figures(stack.mlflow.tracking_uri, name, stack.storage, stack.postgres.database_uri("optuna"))
    report("MLflow gone past the client's retries, then resume", figures, [code, resumed.returncode], started)
    assert_nothing_lost(figures, trials=4, champions=2)

# --------------------------------------------------------------------------- a node removed


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    """A Ray cluster of a head node and a worker node with one CPU each, so that of two trials one
    runs on each; token authentication with a token of this test only (as study.stack.RayHead
    does), which the study processes get through the environment."""
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    token = write_private(tmp_path / "ray-token", secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    reset_auth_token_state()  # this process may have read another mode or token already
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield SimpleNamespace(cluster=cluster, head=cluster.head_node, worker=worker)
    finally:
        cluster.shutdown()
        monkeypatch.undo()
        reset_auth_token_state()


@pytest.mark.parametrize("retries", [2, 0])
def test_a_worker_node_removed_mid_trial(retries, stack, two_nodes):
    """The worker node goes away while it runs a trial. With retries left, Tune restarts the trial
    on the head node from its last checkpoint, in its own MLflow run (whose `ray.node_id` tag
    follows it). With none, the study ends with exit 1 naming the trial and why, and `study resume`
    continues it from its checkpoint. Either way nothing is lost or doubled."""
    started = time.monotonic()
    name = f"node-removed-{retries}"
    epochs = 2 * EPOCHS  # time enough to remove the node before its trial ends
    space = small_space(stack.folder, name=name, space={"lr": [5.0e-4, 1.0e-3], "priors": {"standard": {}}},
                        fixed={"epochs": epochs, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 1000},
                        search={"algorithm": "random", "seed": 0, "trials_per_group": 2, "retries": retries},
                        early_stopping={"grace_period": epochs, "reduction_factor": 2})
    cluster, worker = two_nodes.cluster, two_nodes.worker
    log = stack.folder / "study.log"
    process = study_process("run", space, "--address", cluster.address, env=stack.env, log=log)
    try:
        moved = wait_for_epochs(stack.storage, name, process, epochs=3, node=worker.node_id)
        cluster.remove_node(worker, allow_graceful=False)
    finally:
        code, text = finish(process, log)
    exits = [code]
    if retries:
        assert code == 0, text[-4000:]
    else:
        assert code == 1, text[-4000:]
        assert "1 trial(s) failed after 0 retries" in text and f"{moved}: " in text, text[-4000:]
        assert f"study resume {space}" in text
        resumed = study("resume", space, "--address", cluster.address, env=stack.env, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        exits.append(resumed.returncode)

    results, _ = tune_results(stack.storage, name)
    lines = results[moved]
    nodes = [r["node_id"] for r in lines]
    assert nodes[0] == worker.node_id and nodes[-1] == two_nodes.head.node_id, nodes
    after = next(r for r in lines if r["node_id"] != worker.node_id)
    assert after["epoch"] > 3, [r["epoch"] for r in lines]  # continued from a checkpoint, not from epoch 1
    tracked = Tracked(stack.mlflow.tracking_uri, name)
    assert tracked.trial(moved).data.tags["ray.node_id"] == two_nodes.head.node_id
    figures = fault_figures(stack.mlflow.tracking_uri, name, stack.storage, stack.postgres.database_uri("optuna"))
    fault = "worker node removed, retries left" if retries else "worker node removed, no retries left, then resume"
    report(fault, figures, exits, started)
    assert_nothing_lost(figures, trials=2, champions=1)
