"""Helpers shared by the test files (fixtures live in the conftest.py files): small models and
images for the mathematics; for the integration tests a real `study` process, small spaces, the
embedded default's environment, and reading what MLflow, Optuna and Tune hold.

Heavy libraries (torch, mlflow, optuna) are imported where used, so that importing this module is
cheap for every test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[1]

#: The bucket that the `mlflow_server` fixture proxies artifacts to (under the ``mlflow/`` prefix).
MLFLOW_BUCKET = "vamp-mlflow"

#: Where a study's parts go, as the environment says (study.settings); a test sets its own.
LOCATION_VARIABLES = ("MLFLOW_TRACKING_URI", "STUDY_HOME", "STUDY_OPTUNA_STORAGE", "STUDY_STORAGE", "RAY_ADDRESS")

# --------------------------------------------------------------------------- models and images

BINARY = SimpleNamespace(shape=(1, 28, 28), likelihood="bernoulli", pseudoinput_mean=0.05, pseudoinput_std=0.01)
GRAY = SimpleNamespace(shape=(1, 28, 20), likelihood="logistic", pseudoinput_mean=0.5, pseudoinput_std=0.02)


def images(spec, n, seed=0):
    """`n` random images of `spec`'s shape: binary, or gray levels at bin centres."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d = spec.shape[0] * spec.shape[1] * spec.shape[2]
    x = torch.rand(n, d, generator=g)
    return torch.bernoulli(x, generator=g) if spec.likelihood == "bernoulli" else (torch.floor(x * 256) + 0.5) / 256


def small(model, prior, spec=BINARY, **kw):
    """A small model of the paper's families (K=6, 32 hidden units), seeded."""
    import torch

    from trainables.config import TrainConfig
    from trainables.models import build_model

    torch.manual_seed(0)
    config = TrainConfig(model=model, prior=prior, K=6, hidden=32, z1_size=5, z2_size=4, **kw)
    return build_model(config, spec, images(spec, 20, seed=1))

# --------------------------------------------------------------------------- servers


def pg_connect_args(server, **changes) -> dict:
    """Keyword arguments for ``psycopg.connect`` to a PostgresServer over TCP with its role's password."""
    return {"host": "127.0.0.1", "port": server.port, "user": server.user, "password": server.password,
            "dbname": server.database, **changes}


def s3_keys(server, bucket: str, prefix: str = "") -> list[str]:
    """All object keys in `bucket` under `prefix` of an S3Server, sorted."""
    keys: list[str] = []
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)

# --------------------------------------------------------------------------- the study command


def embedded_env(folder: Path, data_cache: Path) -> dict[str, str]:
    """The environment of a study on the embedded default under `folder`/studies, with the data
    from the session's cache and nothing from the caller's locations."""
    return {**{name: "" for name in LOCATION_VARIABLES}, "STUDY_HOME": str(folder / "studies"),
            "STUDY_CACHE_DIR": str(data_cache), "STUDY_DATA_MIRROR": ""}


def small_space(folder: Path, name: str = "tiny", **overrides) -> Path:
    """A space that runs in seconds: vae with two priors, two trials each, 3 epochs on 500 images.
    `section=value` replaces a section, `section__field=value` one field."""
    spec = {
        "name": name,
        "dataset": "static_mnist",
        "models": ["vae"],
        "space": {"lr": {"loguniform": [3.0e-4, 1.0e-3]},
                  "priors": {"standard": {}, "vampprior": {"K": [20]}}},
        "fixed": {"epochs": 3, "warmup": 2, "patience": 0, "hidden": 64, "train_limit": 500},
        "search": {"algorithm": "tpe", "seed": 0, "trials_per_group": 2},
        "early_stopping": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus": 1, "gpus": 0},
        "evaluation": {"samples": 20, "test_limit": 50},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            spec.setdefault(section, {})[field] = value
        else:
            spec[section] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _environment(env: dict | None) -> dict[str, str]:
    """The caller's environment without its locations (LOCATION_VARIABLES), plus `env`."""
    return {**{k: v for k, v in os.environ.items() if k not in LOCATION_VARIABLES}, **(env or {})}


def study(*args, env: dict | None = None, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A real `study` process, run to its end."""
    return subprocess.run([sys.executable, "-m", "study", *map(str, args)], capture_output=True, text=True,
                          env=_environment(env), timeout=timeout, cwd=cwd)


def study_process(*args, env: dict, log: Path) -> subprocess.Popen:
    """A `study` process in the background (for interrupting it)."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "study", *map(str, args)], stdout=out,
                            stderr=subprocess.STDOUT, env=_environment(env), text=True)


def json_out(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def wait_for_progress(tracking_uri: str, name: str, ended, timeout: float = 300) -> None:
    """Until a trial of study `name` has trained a few epochs while the study still runs;
    `ended()` says why the study ended before that (a message), or None while it runs."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        why = ended()
        assert why is None, f"the study ended before it could be interrupted: {why}"
        try:
            t = Tracked(tracking_uri, name)
            if any(len(t.epochs(r)) >= 2 for r in t.trials):
                return
        except Exception:  # noqa: BLE001 - the database or experiment may not exist yet
            pass
        time.sleep(1)
    raise AssertionError("no trial made progress in time")


class Tracked:
    """What MLflow holds about one study."""

    def __init__(self, tracking_uri: str, study: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(study)
        assert experiment is not None, f"no experiment {study}"
        self.experiment_id = experiment.experiment_id
        runs = self.client.search_runs([self.experiment_id], max_results=1000)
        self.parents = [r for r in runs if r.data.tags.get("vamp.role") == "study"]
        self.trials = [r for r in runs if r.data.tags.get("vamp.role") == "trial"]

    def epochs(self, run) -> list[int]:
        return [m.step for m in self.client.get_metric_history(run.info.run_id, "train_loss")]

    def trial(self, key: str):
        """The run of the trial with this key."""
        (run,) = [r for r in self.trials if r.data.tags["vamp.trial_id"] == key]
        return run

    def versions(self, name: str) -> list:
        return list(self.client.search_model_versions(f"name = '{name}'"))

    def champion(self, name: str):
        return self.client.get_model_version_by_alias(name, "champion")


def optuna_groups(url: str, study: str) -> dict[str, list]:
    """The Optuna studies of a study's groups: group label -> its trials."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    return {s.study_name.split("/", 1)[1]: optuna.load_study(study_name=s.study_name, storage=storage).trials
            for s in storage.get_all_studies() if s.study_name.startswith(f"{study}/")}


def result_lines(storage: Path, study: str) -> dict[str, list[dict]]:
    """Tune's result.json of every trial, over every run of the study: trial key -> results in order."""
    out: dict[str, list[dict]] = {}
    for path in sorted((storage / study).glob("run-*/*/result.json"), key=lambda p: int(p.parts[-3][4:])):
        out.setdefault(path.parent.name, []).extend(
            json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return out


def overlap(a, b) -> bool:
    """Whether two MLflow runs ran at the same time."""
    return a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
