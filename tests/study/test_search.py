"""Tests of study.search: a space -> its (model, prior) groups, their samplers, their trials."""
from __future__ import annotations

import optuna
import pytest

from study import search
from study.spec import parse_space
from trainables.config import TrainConfig
from trainables.errors import InputError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(**changes):
    data = {"name": "t", "dataset": "static_mnist", "models": ["vae", "hvae"],
            "space": {"lr": {"loguniform": [1e-4, 5e-4]},
                      "priors": {"standard": {}, "vampprior": {"K": [50, 500], "trials": 6},
                                 "mog": {"K": {"int_loguniform": [10, 1000]}}}},
            "fixed": {"epochs": 30, "hidden": 64, "train_limit": 500},
            "search": {"trials_per_group": 3, "seed": 7},
            "evaluation": {"samples": 50, "test_limit": 20}}
    data.update(changes)
    return parse_space(data)


def test_groups_are_every_model_and_prior_with_their_budgets():
    groups = search.groups(_spec())
    assert [(g.model, g.prior, g.budget) for g in groups] == [
        ("vae", "standard", 3), ("hvae", "standard", 3),   # consecutive groups alternate models
        ("vae", "vampprior", 6), ("hvae", "vampprior", 6),  # the prior's own budget wins
        ("vae", "mog", 3), ("hvae", "mog", 3)]
    assert groups[2].label == "vae+vampprior" and groups[2].optuna_name("t") == "t/vae+vampprior"
    assert groups[2].trial_key(4) == "vae-vampprior-004"


@pytest.mark.parametrize("prior, expected", [
    ("standard", {"lr": optuna.distributions.FloatDistribution(1e-4, 5e-4, log=True)}),
    ("vampprior", {"lr": optuna.distributions.FloatDistribution(1e-4, 5e-4, log=True),
                   "K": optuna.distributions.CategoricalDistribution([50, 500])}),
    ("mog", {"lr": optuna.distributions.FloatDistribution(1e-4, 5e-4, log=True),
             "K": optuna.distributions.IntDistribution(10, 1000, log=True)}),
])
def test_distributions_search_lr_and_K_only_where_the_prior_has_components(prior, expected):
    assert search.distributions(_spec(), prior) == expected


def test_a_trial_config_that_does_not_hold_names_the_space_file_and_its_field():
    """TrainConfig's constraints, worded for the author of the space file: the file, then the
    dotted field the value came from (here values the file's own rules did not see)."""
    spec = _spec().with_source("spaces/t.yaml")
    vamp = search.groups(spec)[2]
    with pytest.raises(InputError) as error:
        search.trial_config(spec, vamp, {"lr": 0.0, "K": 0}, seed=1)
    assert str(error.value).splitlines() == [
        "spaces/t.yaml: space.priors.vampprior.K must be an integer >= 1, got 0",
        "spaces/t.yaml: space.lr must be a positive finite number, got 0.0"]
    unchecked = spec.model_copy(update={"fixed": spec.fixed.model_copy(update={"hidden": 0})})
    with pytest.raises(InputError, match=r"^spaces/t\.yaml: fixed\.hidden must be an integer >= 1, got 0$"):
        search.trial_config(unchecked, vamp, {"lr": 3e-4, "K": 50}, seed=1)


def test_a_list_of_learning_rates_is_categorical():
    spec = _spec(space={"lr": [1e-4, 5e-4], "priors": {"standard": {}}})
    assert search.distributions(spec, "standard") == {"lr": optuna.distributions.CategoricalDistribution([1e-4, 5e-4])}


def test_trial_config_is_the_fixed_settings_plus_what_was_chosen():
    spec = _spec()
    vamp = search.groups(spec)[2]
    config = search.trial_config(spec, vamp, {"lr": 3e-4, "K": 50}, seed=11)
    assert config == TrainConfig(dataset="static_mnist", model="vae", prior="vampprior", K=50, lr=3e-4, seed=11,
                                 epochs=30, hidden=64, train_limit=500, samples=50, test_limit=20)
    standard = search.trial_config(spec, search.groups(spec)[1], {"lr": 2e-4}, seed=3)
    assert (standard.model, standard.prior, standard.K, standard.lr) == ("hvae", "standard", TrainConfig().K, 2e-4)
    assert search.chosen_settings(vamp, {"lr": 3e-4, "K": 50}, 11) == {
        "model": "vae", "prior": "vampprior", "lr": 3e-4, "K": 50, "seed": 11}


def test_seeds_are_stable_distinct_and_follow_the_study_seed():
    spec, other = _spec(), _spec(search={"trials_per_group": 3, "seed": 8})
    groups = search.groups(spec)
    seeds = {search.trial_seed(spec, g, n) for g in groups for n in range(6)}
    assert len(seeds) == len(groups) * 6 and all(0 <= s < 2 ** 31 for s in seeds)
    assert search.trial_seed(spec, groups[0], 0) == search.trial_seed(_spec(), search.groups(_spec())[0], 0)
    assert search.trial_seed(spec, groups[0], 0) != search.trial_seed(other, search.groups(other)[0], 0)
    assert search.group_seed(spec, groups[0]) != search.group_seed(spec, groups[1])


@pytest.mark.parametrize("budget, startup", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 3), (12, 4), (30, 10), (100, 10)])
def test_tpe_start_up_is_a_third_of_the_budget(budget, startup):
    assert search.startup_trials(budget) == startup


def test_tpe_engages_after_its_start_up_within_a_small_budget():
    spec = _spec(search={"trials_per_group": 6, "seed": 0})
    group = search.groups(spec)[0]
    study = optuna.create_study(direction="minimize")
    for number in range(group.budget):
        study.sampler = search.sampler(spec, group, number)  # as the ledger asks
        trial = study.ask(search.distributions(spec, group.prior))
        study.tell(trial, abs(trial.params["lr"] - 2e-4))
    modelled = [t.number for t in study.trials if any(k.startswith("tpe:") for k in t.system_attrs)]
    assert modelled == list(range(search.startup_trials(6), 6))  # every trial after the start-up


@pytest.mark.parametrize("algorithm", ["tpe", "qmc", "random"])
def test_samplers_are_seeded_per_group(algorithm):
    spec = _spec(search={"trials_per_group": 4, "seed": 0, "algorithm": algorithm})
    def draws(group):
        study = optuna.create_study()
        lrs = []
        for number in range(3):
            study.sampler = search.sampler(spec, group, number)
            lrs.append(study.ask(search.distributions(spec, group.prior)).params["lr"])
        return lrs
    a, b = search.groups(spec)[:2]
    assert draws(a) == draws(a) and draws(a) != draws(b) and len(set(draws(a))) == 3


@pytest.mark.parametrize("algorithm, guided", [("tpe", 2), ("qmc", 0), ("random", 0)])
def test_only_tpe_waits_for_its_start_up(algorithm, guided):
    spec = _spec(search={"trials_per_group": 6, "seed": 0, "algorithm": algorithm})
    assert search.guided_after(spec, search.groups(spec)[0]) == guided


@pytest.mark.parametrize("lr, text", [(5e-4, "5e-4"), (0.000273, "2.7e-4"), (1e-3, "1e-3"), (0.01, "1e-2")])
def test_format_lr(lr, text):
    assert search.format_lr(lr) == text


def test_run_names_say_model_prior_K_lr_and_trial():
    spec = _spec()
    groups = search.groups(spec)
    assert search.run_name(search.trial_config(spec, groups[2], {"lr": 5e-4, "K": 500}, 0), 3) == \
        "vae-vampprior-K500-lr5e-4-003"
    assert search.run_name(search.trial_config(spec, groups[1], {"lr": 1e-4}, 0), 12) == "hvae-standard-lr1e-4-012"
