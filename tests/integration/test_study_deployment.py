"""`study run` against real deployments on 127.0.0.1: an MLflow server with a PostgreSQL backend
store and artifacts proxied to S3 (SeaweedFS), Ray storage in the same S3 endpoint; and a
two-node Ray cluster whose nodes share no dataset folder."""
import math
from pathlib import Path

import psycopg

from tests.helpers import MLFLOW_BUCKET, Tracked, json_out, pg_connect_args, s3_keys, small_space, study

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "MLFLOW_S3_ENDPOINT_URL")


def test_remote_tracking_server_postgres_and_s3_storage(home, tmp_path, s3_server, mlflow_server,
                                                        postgres_server):
    s3_server.create_bucket("vamp-ray")
    env = {**home, **s3_server.env(),  # the driver and Ray write checkpoints to S3 themselves
           "STUDY_OPTUNA_STORAGE": postgres_server.database_uri("optuna")}
    space = small_space(tmp_path, name="remote")
    result = json_out(study("run", space, "--tracking-uri", mlflow_server.tracking_uri,
                            "--storage", "s3://vamp-ray/studies", "--json", env=env))
    assert not Path(home["STUDY_HOME"]).exists()  # nothing went to the embedded default
    assert postgres_server.password not in result["optuna_storage"]

    # the study's record, Ray's experiment state and checkpoints are in the bucket
    ray_keys = s3_keys(s3_server, "vamp-ray", "studies/remote/")
    assert "studies/remote/study.json" in ray_keys
    assert any(k.startswith("studies/remote/run-1/experiment_state") for k in ray_keys)
    assert any(k.endswith("/checkpoint.pt") for k in ray_keys)
    # the groups' Optuna studies are in the deployment's PostgreSQL
    with psycopg.connect(**pg_connect_args(postgres_server, dbname="optuna")) as db:
        studies = {row[0] for row in db.execute("select study_name from studies")}
    assert studies == {"remote/vae+standard", "remote/vae+vampprior"}
    # MLflow's runs are in PostgreSQL, its artifacts (registered weights) in S3
    with psycopg.connect(**pg_connect_args(postgres_server)) as db:
        names = {row[0] for row in db.execute("select name from runs where status = 'FINISHED'")}
    t = Tracked(mlflow_server.tracking_uri, "remote")
    assert {r.info.run_name for r in t.trials + t.parents} <= names and len(t.trials) == 4
    mlflow_keys = s3_keys(s3_server, MLFLOW_BUCKET, f"mlflow/{t.experiment_id}/")  # this study's (the server is shared)
    assert sum(k.endswith("model/weights.pt") for k in mlflow_keys) == len(t.trials)  # every trial's best weights
    assert sum(k.endswith("figures/generations.png") for k in mlflow_keys) == len(result["champions"])

    # a client without any S3 credentials pulls a champion through the server and scores it
    no_aws = {**home, **{k: "" for k in AWS_VARS}}
    name = result["champions"][0]["name"]
    out = tmp_path / "pulled"
    json_out(study("pull", name, "--out", out, "--tracking-uri", mlflow_server.tracking_uri, "--json", env=no_aws))
    scored = json_out(study("score", out, "--samples", 20, "--test-limit", 50, "--json", env=no_aws))
    assert math.isclose(scored["test_ll"], float(t.champion(name).tags["test_ll"]), rel_tol=1e-6)


def test_two_node_cluster_without_a_shared_dataset_folder(home, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    # The nodes' processes (workers included) see no dataset cache and no mirror: had a trial
    # read the dataset from disk, it would fail. They get it from Ray's object store.
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "no-cache-here"))
    monkeypatch.setenv("STUDY_DATA_MIRROR", "")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        space = small_space(tmp_path, name="twonodes", search={"algorithm": "tpe", "seed": 0, "trials_per_group": 2})
        result = json_out(study("run", space, "--address", cluster.address, "--json", env=home))
    finally:
        cluster.shutdown()
    t = Tracked(f"sqlite:///{home['STUDY_HOME']}/mlflow.db", "twonodes")
    assert len(t.trials) == 4 and all(r.info.status == "FINISHED" for r in t.trials)
    assert len({r.data.tags["ray.node_id"] for r in t.trials}) == 2
    assert result["champions"]
    assert not (tmp_path / "no-cache-here").exists()


def test_fractional_gpus_share_a_gpu_and_too_many_are_refused(home, tmp_path):
    """On a cluster with one (pretended) GPU, trials asking for 0.5 run two at a time; asking for
    two GPUs per trial is refused at once, before anything is created."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1})
    try:
        too_many = study("run", small_space(tmp_path, name="toomany", resources={"cpus": 1, "gpus": 2}),
                         "--address", cluster.address, env=home)
        assert too_many.returncode == 2 and "resources.gpus" in too_many.stderr and "has 1" in too_many.stderr
        assert not Path(home["STUDY_HOME"]).exists()

        space = small_space(tmp_path, name="halfgpu", resources={"cpus": 1, "gpus": 0.5},
                            search={"algorithm": "tpe", "seed": 0, "trials_per_group": 1})
        json_out(study("run", space, "--address", cluster.address, "--json", env=home))
    finally:
        cluster.shutdown()
    t = Tracked(f"sqlite:///{home['STUDY_HOME']}/mlflow.db", "halfgpu")
    (a, b) = sorted(t.trials, key=lambda r: r.info.start_time)
    assert a.info.status == b.info.status == "FINISHED"
    assert b.info.start_time < a.info.end_time  # they shared the GPU at the same time
