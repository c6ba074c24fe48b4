"""The schema of a search-space file: pydantic models whose fields carry the rules.

Every rule lives on the field it constrains (``Field``, ``Annotated`` with the rules of
:mod:`study.spec._rules`) or, where it relates fields, in a ``model_validator(mode="after")``.
:mod:`study.spec._messages` words the errors, asking each section what it accepts
(:meth:`_Section.unknown_field`, :meth:`_Section.describe`).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      model_validator)
from pydantic_core import PydanticCustomError

from study.spec._rules import (CREDENTIALS_HINT, LIST, ONE, PER_MODEL, RANGE, SECRET_KEY, OneOf, dataset_names,
                               did_you_mean, distinct_list, int_range, listed_once, listing, log_range, model_names,
                               no_password, none_is_empty, not_empty, one_or_per_model, positive, prior_names, shape,
                               study_name, whole_above_one)
from trainables.config import MIXTURE_PRIORS, Count, CountOrZero, PseudoInputs, TrainConfig

_DEFAULTS = TrainConfig()


# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    """A mapping of the file. Asked by the message formatter what it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @classmethod
    def allowed(cls, parent: Any) -> list[str]:
        """The keys allowed here; `parent` is the key this mapping is under."""
        return list(cls.model_fields)

    @classmethod
    def unknown_field(cls, key: Any, parent: Any) -> str:
        """What to tell a user who wrote `key` here."""
        if isinstance(key, str) and SECRET_KEY.search(key):
            return f"unknown field: {CREDENTIALS_HINT}"
        allowed, hint = cls.allowed(parent), cls.hint(key, parent)
        return f"unknown field{did_you_mean(key, allowed)}; allowed: {listing(allowed)}" + (f"; {hint}" if hint else "")

    @classmethod
    def hint(cls, key: Any, parent: Any) -> str:
        """Advice for a user who wrote the unknown `key` here (empty: none)."""
        return ""

    @classmethod
    def describe(cls, field: str) -> str:
        """What a field holds, for a user who left it out or wrote something else."""
        info = cls.model_fields.get(field)
        if info is None:
            return ""
        examples = f"e.g. {' or '.join(info.examples)}" if info.examples else ""
        return "; ".join(filter(None, [info.description, examples]))


class _Range(_Section):
    """``{loguniform: [low, high]}``-like: one field, the range's kind."""

    @classmethod
    def unknown_field(cls, key: Any, parent: Any) -> str:
        return f"unknown form; allowed: {cls.form()}"

    @classmethod
    def describe(cls, field: str) -> str:
        return f"write {cls.form()}"

    @classmethod
    def form(cls) -> str:
        return f"{{{next(iter(cls.model_fields))}: [low, high]}}, or a list of values"

    @property
    def low(self) -> Any:
        return self._bounds()[0]

    @property
    def high(self) -> Any:
        return self._bounds()[1]

    def _bounds(self) -> list:
        return getattr(self, next(iter(type(self).model_fields)))


class LogUniform(_Range):
    """A float sampled log-uniformly in [low, high]: ``{loguniform: [low, high]}``."""

    loguniform: Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(log_range)]


class IntLogUniform(_Range):
    """An integer sampled log-uniformly in [low, high]: ``{int_loguniform: [low, high]}``."""

    int_loguniform: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2),
                              AfterValidator(int_range)]


_RATES = distinct_list(Annotated[float, AfterValidator(positive)],
                       "empty list; give a list of positive numbers or {loguniform: [low, high]}")
_COUNTS = distinct_list(Annotated[int, Field(ge=1)], "empty list; K must be a non-empty list of integers >= 1, "
                        "e.g. [500], or {int_loguniform: [low, high]}")

LearningRates = Annotated[
    Union[Annotated[LogUniform, Tag(RANGE)], Annotated[_RATES, Tag(LIST)]],
    Discriminator(shape, custom_error_type="form", custom_error_message=(
        "must be either {loguniform: [low, high]} with 0 < low < high, or a non-empty list of positive numbers"))]

Components = Annotated[
    Union[Annotated[IntLogUniform, Tag(RANGE)], Annotated[_COUNTS, Tag(LIST)]],
    Discriminator(shape, custom_error_type="form",
                  custom_error_message="must be a list, e.g. [500], or {int_loguniform: [low, high]}")]


class PriorOptions(_Section):
    """The options of one prior in the space: K for mixture priors (left out: TrainConfig's K),
    and `trials`, which overrides ``search.trials_per_group`` for this prior's groups."""

    K: Components | None = None
    trials: int | None = Field(None, ge=1)

    @classmethod
    def allowed(cls, parent: Any) -> list[str]:
        return list(cls.model_fields) if parent in MIXTURE_PRIORS else ["trials"]

    @classmethod
    def hint(cls, key: Any, parent: Any) -> str:
        return "" if parent in MIXTURE_PRIORS else f"the {parent} prior has no components, so its only option is trials"


NO_COMPONENTS = ("the {prior} prior has no components, so K is not allowed (K applies to "
                 + listing(MIXTURE_PRIORS) + ")")
PriorName = Annotated[str, AfterValidator(OneOf("prior", prior_names))]


def _components(priors: dict[str, PriorOptions]) -> dict[str, PriorOptions]:
    """K belongs to mixture priors only; a mixture prior without K searches TrainConfig's K."""
    for name, options in priors.items():
        if options.K is not None and name not in MIXTURE_PRIORS:
            raise PydanticCustomError("no_components", NO_COMPONENTS.format(prior=name), {"at": f"{name}.K"})
    return {name: options.model_copy(update={"K": [_DEFAULTS.K]}) if name in MIXTURE_PRIORS and options.K is None
            else options for name, options in priors.items()}


class Space(_Section):
    """What each group's sampler searches: the learning rate, and K for mixture priors."""

    lr: LearningRates = Field(examples=["{loguniform: [1.0e-4, 5.0e-4]}", "[5.0e-4]"])
    priors: Annotated[dict[PriorName, Annotated[PriorOptions, BeforeValidator(none_is_empty)]],
                      AfterValidator(not_empty(prior_names)), AfterValidator(_components)] = Field(
        description="each prior's name -> its options", examples=["{standard: {}, vampprior: {K: [500]}}"])

    @classmethod
    def hint(cls, key: Any, parent: Any) -> str:
        return "K goes under a mixture prior: space.priors.<prior>.K" if key == "K" else ""


class Fixed(_Section):
    """TrainConfig fields held fixed for every trial, with TrainConfig's types, constraints and
    defaults (trainables.config holds them once)."""

    epochs: Count = _DEFAULTS.epochs
    warmup: CountOrZero = _DEFAULTS.warmup
    patience: CountOrZero = _DEFAULTS.patience
    batch_size: Count = _DEFAULTS.batch_size
    z1_size: Count = _DEFAULTS.z1_size
    z2_size: Count = _DEFAULTS.z2_size
    hidden: Count = _DEFAULTS.hidden
    pseudoinputs: PseudoInputs = _DEFAULTS.pseudoinputs
    train_limit: Count | None = _DEFAULTS.train_limit


class Search(_Section):
    """How each (model, prior) group is searched, and how trials are run.

    Every group gets exactly its budget of trials (``trials_per_group``, or ``trials`` under a
    prior) and its own sampler (study.search). ``max_concurrent`` caps the trials running at
    once across the whole study (null: only the cluster's resources limit it). ``retries``: a
    trial whose worker, node or storage fails is restarted from its last checkpoint this many
    times; a diverging trial is a result and never retried."""

    algorithm: Literal["tpe", "qmc", "random"] = "tpe"
    seed: int = Field(0, ge=0)
    trials_per_group: int = Field(4, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    retries: int = Field(2, ge=0, le=100)

    @classmethod
    def hint(cls, key: Any, parent: Any) -> str:
        return ("the budget is per (model, prior) group now: search.trials_per_group (or trials under a prior in "
                "space.priors)" if key == "trials_per_model" else "")


class EarlyStopping(_Section):
    """ASHA on the validation loss (beta = 1), one step per epoch, within each group."""

    grace_period: int = Field(10, ge=1)
    reduction_factor: int = Field(3, ge=2)


CpuShare = Annotated[float, Field(gt=0)]
GpuShare = Annotated[float, Field(ge=0), AfterValidator(whole_above_one)]


def _per_model(share: Any) -> Any:
    """One number for every model, or a mapping model -> number."""
    return Annotated[Union[Annotated[share, Tag(ONE)], Annotated[dict[str, share], Tag(PER_MODEL)]],
                     Discriminator(one_or_per_model)]


class Resources(_Section):
    """Per trial, for every model or per model (``gpus: {vae: 0.125, hvae: 0.25}``). Fractional
    GPUs share one device (0.25: four trials per GPU)."""

    cpus: _per_model(CpuShare) = 1.0
    gpus: _per_model(GpuShare) = 0.0

    def of(self, model: str) -> dict[str, float]:
        """Ray's resource request of one trial of `model`: {"cpu": ..., "gpu": ...}."""
        def pick(value):
            return value[model] if isinstance(value, Mapping) else value
        return {"cpu": pick(self.cpus), "gpu": pick(self.gpus)}


class Evaluation(_Section):
    """The champions' test log-likelihood by importance sampling."""

    samples: Count = _DEFAULTS.samples
    test_limit: Count | None = _DEFAULTS.test_limit


class Tracking(_Section):
    """MLflow. ``uri: null`` is the embedded default; --tracking-uri and MLFLOW_TRACKING_URI win."""

    uri: Annotated[str | None, AfterValidator(no_password)] = None


class Storage(_Section):
    """Ray storage: a local folder or s3://bucket/prefix. ``path: null`` is the embedded default;
    --storage wins."""

    path: Annotated[str | None, AfterValidator(no_password)] = None


def _section(cls: type[_Section]) -> Any:
    return Annotated[cls, BeforeValidator(none_is_empty)]


class StudySpec(_Section):
    """One study: what to search, what to hold fixed, how to search and where results go."""

    name: Annotated[str, AfterValidator(study_name)] = Field(
        description="the study name (MLflow experiment, storage folder): 1-64 letters, digits, '_', '.', '-'")
    dataset: Annotated[str, AfterValidator(OneOf("dataset", dataset_names))]
    models: Annotated[list[Annotated[str, AfterValidator(OneOf("model", model_names))]],
                      AfterValidator(not_empty(model_names)), AfterValidator(listed_once)]
    space: Space = Field(description="what to search: lr and priors",
                         examples=["{lr: {loguniform: [1.0e-4, 5.0e-4]}, priors: {standard: {}}}"])
    fixed: _section(Fixed) = Fixed()
    search: _section(Search) = Search()
    early_stopping: _section(EarlyStopping) = EarlyStopping()
    resources: _section(Resources) = Resources()
    evaluation: _section(Evaluation) = Evaluation()
    tracking: _section(Tracking) = Tracking()
    storage: _section(Storage) = Storage()

    _source: Path | None = PrivateAttr(default=None)

    @classmethod
    def describe(cls, field: str) -> str:
        names = {"dataset": lambda: f"one of {listing(dataset_names())}",
                 "models": lambda: f"a list of one or more of {listing(model_names())}"}
        return names[field]() if field in names else super().describe(field)

    @classmethod
    def hint(cls, key: Any, parent: Any) -> str:
        homes = [name for name, info in cls.model_fields.items()
                 if isinstance(info.default, _Section) and key in type(info.default).model_fields]
        return f"it belongs under {homes[0]}: ({homes[0]}.{key})" if homes else ""

    @model_validator(mode="after")
    def _fits_together(self) -> "StudySpec":
        if self.early_stopping.grace_period > self.fixed.epochs:
            raise PydanticCustomError("order", f"must be <= fixed.epochs ({self.fixed.epochs}), got "
                                      f"{self.early_stopping.grace_period}", {"at": "early_stopping.grace_period"})
        for field in ("cpus", "gpus"):
            per_model = getattr(self.resources, field)
            if not isinstance(per_model, Mapping):
                continue
            for model in per_model:
                if model not in self.models:
                    raise PydanticCustomError(
                        "not_in_study", "{model} is not a model of this study; its models: {models}",
                        {"at": f"resources.{field}.{model}", "models": ", ".join(self.models), "model": repr(model)})
            missing = [m for m in self.models if m not in per_model]
            if missing:
                raise PydanticCustomError("incomplete", "give every model of the study a value (missing: "
                                          f"{', '.join(missing)}), or one number for all", {"at": f"resources.{field}"})
        return self

    @property
    def source(self) -> Path | None:
        """The file this spec was read from (None when built in code)."""
        return self._source

    def with_source(self, source: str | Path | None) -> "StudySpec":
        """A copy that remembers the file it came from."""
        copy = self.model_copy()
        copy._source = Path(source) if source is not None else None
        return copy

    def priors(self) -> list[str]:
        """Prior names in file order."""
        return list(self.space.priors)
