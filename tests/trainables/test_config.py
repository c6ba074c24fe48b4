"""TrainConfig: its constraints live on its fields, and each caller's errors name the field as
its user knows it (a flag of `study train`, a dotted field of a space file, a saved config.json).
The third caller, the space file, is tested in tests/study/test_search.py."""
from __future__ import annotations

import json
import sys
from typing import get_args

import pytest
from pydantic import ValidationError

from study.train_command import FLAGS, train_config
from tests.helpers import small
from trainables.artifacts import FORMAT, read_config
from trainables.config import (MIXTURE_PRIORS, DatasetName, ModelName, PriorName, TrainConfig, config_error)
from trainables.data import DATASETS
from trainables.errors import InputError
from trainables.models import MODELS
from trainables.priors import PRIORS, MixturePrior


def test_the_names_are_the_registries():
    """config.py spells the names (it imports no registry: no torch, no import circle); they must
    be exactly the registries' keys, and the mixture priors those whose prior has components."""
    assert set(get_args(DatasetName)) == set(DATASETS)
    assert set(get_args(ModelName)) == set(MODELS)
    assert set(get_args(PriorName)) == set(PRIORS)
    assert {p for p in PRIORS if isinstance(small("vae", p).prior, MixturePrior)} == MIXTURE_PRIORS


def test_a_config_that_exists_is_valid():
    with pytest.raises(ValidationError):
        TrainConfig(K=0)
    config = TrainConfig(lr=1e-3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match=r"^epochs must be an integer >= 1, got 0$"):
        config.replace(epochs=0)
    with pytest.raises(ValidationError):  # frozen
        config.lr = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("flags, message", [
    ({"model": "transformer"}, "--model 'transformer' is not known; allowed: convhvae, hvae, pixelhvae, vae"),
    ({"dataset": "cifar10"}, "--dataset 'cifar10' is not known; allowed: caltech101, dynamic_mnist, freyfaces, "
                             "histopathology, omniglot, static_mnist"),
    ({"K": 0}, "--K must be an integer >= 1, got 0"),
    ({"lr": 0.0}, "--lr must be a positive finite number, got 0.0"),
    ({"lr": float("inf")}, "--lr must be a finite number, got inf"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
    ({"warmup": -1}, "--warmup must be an integer >= 0, got -1"),
    ({"test_limit": 0}, "--test-limit must be an integer >= 1, got 0"),
    ({"pseudoinputs": "zeros"}, "--pseudoinputs 'zeros' is not known; allowed: data, random"),
    ({"device": "tpu"}, "--device 'tpu' is not known; allowed: auto, cpu, cuda"),
])
def test_study_train_names_the_flag(flags, message):
    with pytest.raises(InputError) as error:
        train_config(**flags)
    assert str(error.value) == message


def test_study_train_exits_2_naming_the_flag(monkeypatch, capsys, tmp_path):
    from study import cli

    monkeypatch.setattr(sys, "argv", ["study", "train", "--lr", "0", "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as end:
        cli.main()
    assert end.value.code == 2
    assert "--lr must be a positive finite number, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_saved_config_names_its_file_and_field(tmp_path):
    meta = {"format": FORMAT, "config": {**TrainConfig().to_dict(), "K": 0, "prior": "flow", "colour": 1},
            "weights_sha256": "0" * 64}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as error:
        read_config(tmp_path)
    path = tmp_path / "config.json"
    assert str(error.value).splitlines() == [
        f"{path}: config.prior 'flow' is not known; allowed: mog, standard, vampprior, vampprior_data, "
        "vampprior_weighted",
        f"{path}: config.K must be an integer >= 1, got 0",
        f"{path}: config.colour is not a field of a training configuration; allowed: "
        + ", ".join(sorted(TrainConfig.model_fields))]
    (tmp_path / "config.json").write_text(json.dumps({**meta, "config": {"K": "500"}}))
    with pytest.raises(InputError, match=r": config\.K must be an integer, got '500'$"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**meta, "config": None}))
    with pytest.raises(InputError, match=r": config must be a mapping of TrainConfig fields, got None$"):
        read_config(tmp_path)


def test_the_names_and_the_source_are_the_callers():
    with pytest.raises(ValidationError) as error:
        TrainConfig(hidden=0, seed=1.5)
    assert str(config_error(error.value)).splitlines() == [
        "seed must be an integer, got 1.5", "hidden must be an integer >= 1, got 0"]
    assert str(config_error(error.value, {"hidden": "fixed.hidden"}, "s.yaml")).splitlines() == [
        "s.yaml: seed must be an integer, got 1.5", "s.yaml: fixed.hidden must be an integer >= 1, got 0"]
    assert FLAGS["z1_size"] == "--z1-size" and FLAGS["K"] == "--K"
