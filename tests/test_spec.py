"""Tests of study.spec: the search-space files and their validation messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.spec import IntLogUniform, LogUniform, StudySpec, load_space, parse_space
from trainables.config import MIXTURE_PRIORS, TrainConfig
from trainables.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
BAD = Path(__file__).resolve().parent / "spaces" / "bad"
PAPER_MODELS = ["vae", "hvae", "convhvae", "pixelhvae"]
PAPER_PRIORS = ["standard", "mog", "vampprior", "vampprior_data"]
DATASET_FILES = ["static_mnist", "dynamic_mnist", "omniglot", "caltech101", "freyfaces", "histopathology"]


def K_values(spec: StudySpec, prior: str):
    K = spec.space.priors[prior].K
    return list(K) if isinstance(K, list) else K


def _spec(**changes) -> StudySpec:
    data = {
        "name": "t",
        "dataset": "static_mnist",
        "models": ["vae"],
        "space": {"lr": {"loguniform": [1e-4, 5e-4]},
                  "priors": {"standard": {}, "vampprior": {"K": [50, 500]}, "mog": {"K": {"int_loguniform": [10, 1000]}}}},
        "fixed": {"epochs": 30},
    }
    data.update(changes)
    return parse_space(data)


# --------------------------------------------------------------------------- the shipped files


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_file_loads(path: Path) -> None:
    spec = load_space(path)
    assert spec.source == path
    assert spec.name == path.stem
    for model in spec.models:
        for prior in spec.priors():
            K = K_values(spec, prior)
            assert spec.train_config(model=model, prior=prior, lr=1e-4, K=K[0] if K else None,
                                     seed=0).dataset == spec.dataset


def test_one_file_per_dataset_and_a_quickstart() -> None:
    assert {p.stem for p in SPACES.glob("*.yaml")} == set(DATASET_FILES) | {"quickstart"}


@pytest.mark.parametrize("dataset, K", [(d, 1000 if d == "omniglot" else 500) for d in DATASET_FILES])
def test_paper_settings(dataset: str, K: int) -> None:
    spec = load_space(SPACES / f"{dataset}.yaml")
    assert spec.dataset == dataset
    assert spec.models == PAPER_MODELS
    assert spec.priors() == PAPER_PRIORS
    assert K_values(spec, "standard") is None
    for prior in PAPER_PRIORS[1:]:
        assert K_values(spec, prior) == [K]
    assert spec.space.lr == LogUniform(loguniform=(1e-4, 5e-4))
    fixed = spec.fixed
    assert (fixed.epochs, fixed.warmup, fixed.patience, fixed.batch_size) == (2000, 100, 50, 100)
    assert (fixed.z1_size, fixed.z2_size, fixed.hidden, fixed.train_limit) == (40, 40, 300, None)
    assert (spec.evaluation.samples, spec.evaluation.test_limit) == (5000, None)
    assert [spec.resources.of(m) for m in PAPER_MODELS] == [
        {"cpu": 1, "gpu": 0.125}, {"cpu": 1, "gpu": 0.25}, {"cpu": 1, "gpu": 0.5}, {"cpu": 1, "gpu": 0.5}]
    assert (spec.early_stopping.grace_period, spec.early_stopping.reduction_factor) == (100, 3)
    assert spec.search.max_concurrent is None and spec.search.trials_per_group >= 3
    assert (spec.tracking.uri, spec.storage.path) == (None, None)


def test_quickstart_is_small() -> None:
    """It runs on 2 CPU cores in minutes, with real (mirrored) data: bounds, not exact values."""
    spec = load_space(SPACES / "quickstart.yaml")
    assert (spec.name, spec.dataset) == ("quickstart", "static_mnist")
    assert "vampprior" in spec.priors() and max(K_values(spec, "vampprior")) <= 100
    assert spec.fixed.epochs <= 5 and spec.fixed.train_limit <= 5000
    assert spec.resources.of("vae") == {"cpu": 1, "gpu": 0}
    assert spec.search.trials_per_group * len(spec.models) * len(spec.priors()) <= 8
    assert spec.evaluation.samples <= 500 and spec.evaluation.test_limit <= 1000


# --------------------------------------------------------------------------- StudySpec


def test_defaults_are_trainconfig_defaults(tmp_path: Path) -> None:
    path = tmp_path / "min.yaml"
    path.write_text("name: m\ndataset: omniglot\nmodels: [hvae]\n"
                    "space: {lr: [5e-4], priors: {standard: , vampprior: {}}}\nfixed:\n")
    spec = load_space(path)
    default = TrainConfig()
    for field, value in spec.fixed.model_dump().items():
        assert value == getattr(default, field), field
    assert spec.evaluation.samples == default.samples
    assert K_values(spec, "vampprior") == [default.K]  # K omitted: TrainConfig's default
    assert spec.space.lr == [5e-4]  # 5e-4 without a dot is a float, not a string
    assert (spec.search.algorithm, spec.resources.gpus) == ("tpe", 0)


SMALL_SPACE = """
name: small
dataset: static_mnist
models: [vae]
space:
  lr: {loguniform: [1.0e-4, 1.0e-3]}
  priors: {standard: {}, vampprior: {K: [50]}}
fixed: {epochs: 3, warmup: 2, patience: 2, batch_size: 100, hidden: 300, train_limit: 2000}
early_stopping: {grace_period: 1, reduction_factor: 2}
evaluation: {samples: 500, test_limit: 500}
"""


@pytest.fixture
def small_space(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_SPACE)
    return path


def test_train_config_applies_fixed_fields(small_space: Path) -> None:
    spec = load_space(small_space)
    config = spec.train_config(model="vae", prior="vampprior", lr=3e-4, K=50, seed=7)
    assert isinstance(config, TrainConfig)
    assert config == TrainConfig(dataset="static_mnist", model="vae", prior="vampprior", K=50, lr=3e-4, seed=7,
                                 epochs=3, warmup=2, patience=spec.fixed.patience, batch_size=100, hidden=300,
                                 train_limit=2000, samples=500, test_limit=500, device="auto")
    standard = spec.train_config(model="vae", prior="standard", lr=3e-4, K=None, seed=0)
    assert standard.K == TrainConfig().K and not standard.mixture


@pytest.mark.parametrize("model, prior, error", [("hvae", "standard", ValueError), ("vae", "mog", KeyError)])
def test_train_config_rejects_what_the_study_lacks(model: str, prior: str, error: type, small_space: Path) -> None:
    with pytest.raises(error):
        load_space(small_space).train_config(model=model, prior=prior, lr=1e-4, K=None, seed=0)


def test_spec_is_frozen_and_round_trips() -> None:
    spec = _spec()
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec
    assert "source" not in StudySpec.model_json_schema()["properties"]
    assert isinstance(spec.space.priors["mog"].K, IntLogUniform)


def test_mixture_priors_come_from_trainconfig() -> None:
    assert spec_mixtures() == set(MIXTURE_PRIORS)


def spec_mixtures() -> set[str]:
    spec = _spec(space={"lr": [1e-4], "priors": {p: {} for p in
                                                 ["standard", "mog", "vampprior", "vampprior_data", "vampprior_weighted"]}})
    return {p for p in spec.priors() if spec.space.priors[p].K is not None}


# --------------------------------------------------------------------------- bad files


def _expectations(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    expects = [line.split("# expect:", 1)[1].strip() for line in lines if line.startswith("# expect:")]
    assert expects, f"{path} has no '# expect:' header"
    return expects


BAD_FILES = sorted(BAD.glob("*.yaml"))


def test_the_bad_corpus_is_large_enough() -> None:
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_file_is_rejected_with_a_clear_message(path: Path) -> None:
    label = str(path.relative_to(ROOT))
    with pytest.raises(InputError) as info:
        load_space(label if Path(label).exists() else path)
    message = str(info.value)
    lines = message.splitlines()
    for line in lines:  # every line names the file
        assert line.startswith(str(path.relative_to(ROOT)) + ": ") or line.startswith(str(path) + ": "), line
    for fragment in _expectations(path):
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "pydantic" not in message and "Input should be" not in message
    assert "not-a-real-secret" not in message and "hunter2" not in message and "s3cret" not in message


def test_several_problems_are_reported_one_per_line() -> None:
    with pytest.raises(InputError) as info:
        load_space(BAD / "several_errors.yaml")
    assert len(str(info.value).splitlines()) == 4


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^nope\.yaml: no such file$"):
        load_space("nope.yaml")
    with pytest.raises(InputError, match=r": is a folder"):
        load_space(tmp_path)


def test_message_names_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("x.yaml").write_text("name: x\ndataset: cifar\nmodels: [vae]\nspace: {lr: [1.0e-4], priors: {standard: {}}}\n")
    with pytest.raises(InputError) as info:
        load_space("x.yaml")
    assert str(info.value) == ("x.yaml: dataset: 'cifar' is not a dataset; allowed: caltech101, dynamic_mnist, "
                               "freyfaces, histopathology, omniglot, static_mnist")
