"""The one contract between a search space and the engine: a study's (model, prior) groups, the
sampler and the early stopping of each group, and the configuration of each trial.

A study compares (model, prior) combinations, each at its best learning rate and K, so the unit
of search is the *group*: every group gets exactly its budget of trials
(``search.trials_per_group``, or ``trials`` under a prior), its own sampler over lr (and K for
priors with components) seeded from (study seed, group), and its own early stopping, which
compares a trial only with trials of the same group.

Samplers (``search.algorithm``):

- ``tpe`` (default): Optuna's TPE with its random start-up sized to the budget,
  ``ceil(budget / 3)`` trials (at least 1, at most 10), so that it models the results for the
  remaining two thirds even at the small budgets a study affords per group (Optuna's default
  of 10 random start-up trials exceeds most budgets: TPE would never engage). Multivariate (lr
  and K together), with the constant liar for the trials still running.
- ``qmc``: a scrambled Sobol sequence: no model of the results, but an even cover of the
  range at any budget (a good choice for budgets of 1-3).
- ``random``: independent uniform draws, as a baseline.

Early stopping is Optuna's asynchronous successive halving (ASHA, Li et al. 2020) in each
group's study: at epochs grace_period x reduction_factor^k a trial goes on only if its
validation loss is in the best 1/reduction_factor of its group's trials at that epoch.
Because the rungs live in the Optuna storage, they survive a driver crash and a resume.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from study.spec import IntLogUniform, LogUniform, StudySpec
from trainables.config import MIXTURE_PRIORS, TrainConfig


@dataclass(frozen=True)
class Group:
    """One (model, prior) combination of a study, with its trial budget."""

    model: str
    prior: str
    budget: int

    @property
    def label(self) -> str:
        return f"{self.model}+{self.prior}"

    def optuna_name(self, study: str) -> str:
        """The group's Optuna study: `<study>/<model>+<prior>`."""
        return f"{study}/{self.label}"

    def trial_key(self, number: int) -> str:
        """The trial's name within its study, stable across resumes: `<model>-<prior>-<number>`."""
        return f"{self.model}-{self.prior}-{number:03d}"


def groups(spec: StudySpec) -> list[Group]:
    """Every (model, prior) group, prior by prior, so that consecutive groups alternate models
    (the engine issues trials round-robin: all models start at once)."""
    return [Group(model, prior, spec.space.priors[prior].trials or spec.search.trials_per_group)
            for prior in spec.priors() for model in spec.models]


def stable_seed(*parts: object) -> int:
    """A seed in [0, 2^31) from `parts`, the same on every machine and Python run."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def group_seed(spec: StudySpec, group: Group) -> int:
    return stable_seed("group", spec.search.seed, group.model, group.prior)


def trial_seed(spec: StudySpec, group: Group, number: int) -> int:
    """A trial's own seed (model initialisation, batches, binarization, IS estimate), derived from
    the study seed and the trial; logged as the param `seed`, so `study train --seed` repeats it."""
    return stable_seed("trial", spec.search.seed, group.model, group.prior, number)


def distributions(spec: StudySpec, prior: str) -> dict[str, BaseDistribution]:
    """What a group's sampler chooses: `lr`, and `K` for priors with components."""
    lr = spec.space.lr
    chosen: dict[str, BaseDistribution] = {
        "lr": FloatDistribution(lr.low, lr.high, log=True) if isinstance(lr, LogUniform)
        else CategoricalDistribution(list(lr))}
    if prior in MIXTURE_PRIORS:
        K = spec.space.priors[prior].K
        chosen["K"] = (IntDistribution(K.low, K.high, log=True) if isinstance(K, IntLogUniform)
                       else CategoricalDistribution(list(K)))
    return chosen


def startup_trials(budget: int) -> int:
    """TPE's random start-up for a group of `budget` trials: a third of it, 1 to 10."""
    return max(1, min(10, math.ceil(budget / 3)))


SAMPLERS = {
    "tpe": lambda budget, seed: optuna.samplers.TPESampler(
        n_startup_trials=startup_trials(budget), multivariate=True, constant_liar=True, seed=seed),
    "qmc": lambda budget, seed: optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed),
    "random": lambda budget, seed: optuna.samplers.RandomSampler(seed=seed),
}


def sampler(spec: StudySpec, group: Group, number: int) -> optuna.samplers.BaseSampler:
    """The sampler that chooses the group's trial `number`. Seeded from (study seed, group, number):
    a resumed study draws what an uninterrupted one would have, not its first draws again. QMC
    keeps its place in the sequence in the storage, so its seed is the group's alone."""
    seed = (group_seed(spec, group) if spec.search.algorithm == "qmc"
            else stable_seed("sampler", spec.search.seed, group.model, group.prior, number))
    with warnings.catch_warnings():  # QMC and multivariate TPE are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[spec.search.algorithm](group.budget, seed)


def guided_after(spec: StudySpec, group: Group) -> int:
    """How many of a group's trials must have ended before its sampler models their results (TPE's
    start-up); 0 for samplers that model nothing."""
    return startup_trials(group.budget) if spec.search.algorithm == "tpe" else 0


def pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """ASHA within one group (see the module docstring)."""
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.early_stopping.grace_period, reduction_factor=spec.early_stopping.reduction_factor,
        min_early_stopping_rate=0, bootstrap_count=0)


def fixed_settings(spec: StudySpec) -> dict:
    """The TrainConfig fields every trial of the study shares (the search adds SEARCHED_FIELDS)."""
    return {"dataset": spec.dataset, **spec.fixed.model_dump(), "samples": spec.evaluation.samples,
            "test_limit": spec.evaluation.test_limit, "device": "auto"}


def chosen_settings(group: Group, params: dict, seed: int) -> dict:
    """What the search chose for one trial, as TrainConfig fields."""
    chosen = {"model": group.model, "prior": group.prior, "lr": float(params["lr"]), "seed": seed}
    if "K" in params:
        chosen["K"] = int(params["K"])
    return chosen


def spec_fields(spec: StudySpec, group: Group) -> dict[str, str]:
    """Where each TrainConfig field of the group's trials comes from in the space file (a dotted
    field), for errors that name it as the file's author wrote it."""
    return {"dataset": "dataset", "model": "models", "prior": "space.priors", "lr": "space.lr",
            "K": f"space.priors.{group.prior}.K", "seed": "search.seed",
            "samples": "evaluation.samples", "test_limit": "evaluation.test_limit",
            **{field: f"fixed.{field}" for field in spec.fixed.model_dump()}}


def trial_config(spec: StudySpec, group: Group, params: dict, seed: int) -> TrainConfig:
    """The whole configuration of one trial; InputError naming the space file and its field."""
    return TrainConfig.from_dict({**fixed_settings(spec), **chosen_settings(group, params, seed)},
                                 names=spec_fields(spec, group), source=str(spec.source or "the search space"))


def format_lr(lr: float) -> str:
    """5e-4 for 0.0005, 2.7e-4 for 0.000273: short and sortable by eye."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_name(config: TrainConfig, number: int) -> str:
    """hvae-vampprior-K500-lr5e-4-003: the name of a trial in Tune and in MLflow."""
    k = f"-K{config.K}" if config.mixture else ""
    return f"{config.model}-{config.prior}{k}-lr{format_lr(config.lr)}-{number:03d}"
