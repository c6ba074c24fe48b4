"""Tests of study.spec: the search-space files and their validation messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from study import search
from study.spec import IntLogUniform, LogUniform, StudySpec, load_space, parse_space
from trainables.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "search_spaces"
BAD = Path(__file__).resolve().parent / "spaces" / "bad"
PAPER_MODELS = ["vae", "hvae", "convhvae", "pixelhvae"]
PAPER_PRIORS = ["standard", "mog", "vampprior", "vampprior_data"]
DATASET_FILES = ["static_mnist", "dynamic_mnist", "omniglot", "caltech101", "freyfaces", "histopathology"]


def K_values(spec: StudySpec, prior: str) -> list[int] | None:
    """The K a group of `prior` chooses from (None: the prior has no components)."""
    K = search.distributions(spec, prior).get("K")
    return list(K.choices) if K is not None else None


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
            group = search.Group(model, prior, 1)
            K = K_values(spec, prior)
            params = {"lr": 1e-4, **({"K": K[0]} if K else {})}
            assert search.trial_config(spec, group, params, seed=0).dataset == spec.dataset


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
    assert spec.space.lr == LogUniform(loguniform=[1e-4, 5e-4])
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


def test_a_minimal_file_runs_the_papers_settings(tmp_path: Path) -> None:
    """Sections left out (or empty) mean the paper's settings (Sec. 4); K left out means 500."""
    path = tmp_path / "min.yaml"
    path.write_text("name: m\ndataset: omniglot\nmodels: [hvae]\n"
                    "space: {lr: [5e-4], priors: {standard: , vampprior: {}}}\nfixed:\n")
    spec = load_space(path)
    assert spec.space.lr == [5e-4]  # 5e-4 without a dot is a float, not a string
    assert spec.priors() == ["standard", "vampprior"]
    group = next(g for g in search.groups(spec) if g.prior == "vampprior")
    assert search.distributions(spec, "vampprior")["K"].choices == (500,)
    config = search.trial_config(spec, group, {"lr": 5e-4, "K": 500}, seed=1)
    assert (config.epochs, config.warmup, config.patience, config.batch_size) == (2000, 100, 50, 100)
    assert (config.z1_size, config.z2_size, config.hidden, config.pseudoinputs) == (40, 40, 300, "random")
    assert (config.samples, config.test_limit, config.train_limit) == (5000, None, None)
    assert (spec.search.algorithm, spec.resources.of("hvae")) == ("tpe", {"cpu": 1, "gpu": 0})


def test_priors_keep_the_order_of_the_file() -> None:
    spec = _spec(space={"lr": [1e-4], "priors": {"vampprior": {}, "standard": {}, "mog": {"K": [5]}}})
    assert spec.priors() == ["vampprior", "standard", "mog"]


def test_spec_is_frozen_and_round_trips_through_its_json() -> None:
    """The manifest of a study keeps the spec as JSON; a resume reads it back unchanged."""
    spec = _spec()
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]
    assert parse_space(spec.model_dump(mode="json")) == spec
    assert "source" not in StudySpec.model_json_schema()["properties"]
    assert isinstance(spec.space.priors["mog"].K, IntLogUniform)


@pytest.mark.parametrize("field, value, message", [
    ("name", "a" * 65, "name: 'aaaa"),
    ("models", ["vae", "hvae", "vae"], "models[2]: 'vae' is listed twice"),
    ("space", {"lr": [1e-4, 1e-4], "priors": {"standard": {}}}, "space.lr[1]: 0.0001 is listed twice"),
    ("space", {"lr": {"loguniform": [1e-4]}, "priors": {"standard": {}}},
     "space.lr.loguniform: must hold at least 2 values, got [0.0001]"),
    ("space", {"lr": "fast", "priors": {"standard": {}}}, "space.lr: must be either {loguniform: [low, high]}"),
    ("space", {"lr": [float("inf")], "priors": {"standard": {}}}, "space.lr[0]: must be a finite number, got inf"),
    ("space", {"lr": [1e-4], "priors": {"mog": {"K": [5, 5]}}}, "space.priors.mog.K[1]: 5 is listed twice"),
    ("tracking", {"uri": ""}, "tracking.uri: must not be empty; write null for the default"),
    ("resources", {"gpus": {"vae": 1}, "cpus": {"hvae": 1, "vae": 1}},
     "resources.cpus.hvae: 'hvae' is not a model of this study"),
    ("evaluation", {"samples": 1.5}, "evaluation.samples: must be an integer, got 1.5"),
])
def test_rules_beyond_the_bad_corpus(field: str, value, message: str) -> None:
    with pytest.raises(InputError) as info:
        _spec(**{field: value})
    assert f"<spec>: {message}" in str(info.value)


def test_a_mixture_prior_without_K_is_the_same_study_as_K_500() -> None:
    """What a resume compares: leaving K out and writing TrainConfig's K are one spec."""
    left_out = _spec(space={"lr": [1e-4], "priors": {"vampprior": {}}})
    written = _spec(space={"lr": [1e-4], "priors": {"vampprior": {"K": [500]}}})
    assert left_out == written and left_out.space.priors["vampprior"].K == [500]


def test_what_follows_from_another_error_is_not_reported() -> None:
    """A refused prior's value is not read (it may be a secret); a misspelt key is one line."""
    with pytest.raises(InputError) as info:
        _spec(space={"lr": [1e-4], "priors": {"standard": {}, "api_key": "s3cret"}})
    assert str(info.value).count("\n") == 0 and "s3cret" not in str(info.value)
    with pytest.raises(InputError) as info:
        _spec(space={"lr": {"logunifrom": [1e-4, 1e-3]}, "priors": {"standard": {}}})
    assert str(info.value).splitlines() == ["<spec>: space.lr.logunifrom: unknown form; allowed: "
                                            "{loguniform: [low, high]}, or a list of values"]


@pytest.mark.parametrize("line", ["true: 1", "1: x", "null: 2"])
def test_a_key_that_is_not_a_name_is_refused_with_its_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "k.yaml"
    path.write_text("name: k\ndataset: static_mnist\nmodels: [vae]\nspace: {lr: [1.0e-4], priors: {standard: {}}}\n"
                    f"{line}\n")
    with pytest.raises(InputError, match=r"k\.yaml: line 5: invalid YAML \(a key must be a name"):
        load_space(path)


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
