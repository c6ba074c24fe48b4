"""The search-space file of a study: its YAML format, its validation and what Tune/Optuna need.

A user writes one YAML file per study (see ``search_spaces/``)::

    name: omniglot
    dataset: omniglot
    models: [vae, hvae, convhvae, pixelhvae]
    space:
      lr: {loguniform: [1.0e-4, 5.0e-4]}      # or a list of values: [1.0e-4, 5.0e-4]
      priors:
        standard: {}
        vampprior: {K: [1000], trials: 12}   # or {K: {int_loguniform: [100, 1000]}}
    fixed: {epochs: 2000, warmup: 100, ...}  # TrainConfig fields held fixed
    search: {algorithm: tpe, seed: 0, trials_per_group: 8, max_concurrent: null, retries: 2}
    early_stopping: {grace_period: 10, reduction_factor: 3}
    resources: {cpus: 1, gpus: {vae: 0.125, hvae: 0.25}}   # or one number for every model
    evaluation: {samples: 5000, test_limit: null}
    tracking: {uri: null}
    storage: {path: null}

:func:`load_space` reads and validates a file and returns a frozen :class:`StudySpec`; every
problem becomes one :class:`~trainables.errors.InputError` whose message names the file, the
field (dotted path) and what is allowed, one line per problem.

A study compares (model, prior) groups; :mod:`study.search` turns a spec into its groups,
their samplers and their trials' configs (the one contract between a space and the engine).

Allowed datasets, models and priors come from the registries (``DATASETS``, ``MODELS``,
``PRIORS``) and mixture priors from :data:`trainables.config.MIXTURE_PRIORS`, so a new entry
there needs no change here. Credentials are never part of the file.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from trainables.config import MIXTURE_PRIORS, TrainConfig
from trainables.errors import InputError

__all__ = [
    "EarlyStopping",
    "Evaluation",
    "Fixed",
    "IntLogUniform",
    "LogUniform",
    "MIXTURE_PRIORS",
    "PriorOptions",
    "Resources",
    "Search",
    "Space",
    "Storage",
    "StudySpec",
    "Tracking",
    "load_space",
    "parse_space",
]

_DEFAULTS = TrainConfig()
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Keys that look like credentials: rejected with a pointer to the environment variables.
_SECRET_KEY = re.compile(
    r"secret|password|passwd|token|credential|access[_-]?key|api[_-]?key|private[_-]?key|^aws_|session[_-]?key",
    re.IGNORECASE,
)
_CREDENTIALS_HINT = (
    "credentials are never read from the search-space file; remove this key and set them in the "
    "environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_ENDPOINT_URL) "
    "for S3 storage, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
    "for the MLflow tracking server"
)
_SPEC_ERROR = "study_spec"  # our own pydantic error type: message lines "<relative path>\t<text>"


# --------------------------------------------------------------------------- registries


def _datasets() -> list[str]:
    from trainables.data import DATASETS

    return sorted(DATASETS)


def _models() -> list[str]:
    from trainables.models import MODELS

    return sorted(MODELS)


def _priors() -> list[str]:
    from trainables.priors import PRIORS

    return sorted(PRIORS)


def _mixtures() -> list[str]:
    return sorted(MIXTURE_PRIORS)


# --------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    """A value as the user wrote it (YAML-ish): strings quoted, None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        if len(value) <= 6 and all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
            return "[" + ", ".join(_show(v) for v in value) + "]"
        return "a list"
    return type(value).__name__


def _allowed(names) -> str:
    return ", ".join(sorted(names))


def _did_you_mean(word: Any, names) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _join(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else str(key)


class _Problems:
    """Problems found by a validator, each with a path relative to the validated field."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, text: str) -> None:
        self.items.append((path, text))

    def raise_if_any(self) -> None:
        if self.items:
            text = "\n".join(f"{path}\t{msg}" for path, msg in self.items)
            raise PydanticCustomError(_SPEC_ERROR, "{text}", {"text": text})


# --------------------------------------------------------------------------- the model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class LogUniform(_Section):
    """A float sampled log-uniformly in [low, high]: ``{loguniform: [low, high]}``."""

    loguniform: tuple[float, float]

    @property
    def low(self) -> float:
        return self.loguniform[0]

    @property
    def high(self) -> float:
        return self.loguniform[1]


class IntLogUniform(_Section):
    """An integer sampled log-uniformly in [low, high]: ``{int_loguniform: [low, high]}``."""

    int_loguniform: tuple[int, int]

    @property
    def low(self) -> int:
        return self.int_loguniform[0]

    @property
    def high(self) -> int:
        return self.int_loguniform[1]


class PriorOptions(_Section):
    """The options of one prior in the space. K is set (never None) exactly for mixture priors;
    `trials` overrides ``search.trials_per_group`` for this prior's groups."""

    K: list[int] | IntLogUniform | None = None
    trials: int | None = Field(None, ge=1)


def _check_lr(value: Any, problems: _Problems) -> Any:
    """``{loguniform: [low, high]}`` or a non-empty list of positive numbers; normalised."""
    shape = "either {loguniform: [low, high]} with 0 < low < high, or a non-empty list of positive numbers"
    if isinstance(value, LogUniform):
        return value
    if isinstance(value, Mapping):
        keys = list(value)
        if keys != ["loguniform"]:
            extra = [k for k in keys if k != "loguniform"]
            problems.add(str(extra[0]) if extra else "", f"unknown form; allowed: {shape}" if extra
                         else f"must be {shape}")
            return None
        bounds = value["loguniform"]
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
            problems.add("loguniform", f"must be a list [low, high] of two numbers, got {_show(bounds)}")
            return None
        bad = False
        for i, b in enumerate(bounds):
            if not _is_number(b) or not math.isfinite(b):
                problems.add(f"loguniform[{i}]", f"must be a finite number, got {_show(b)}")
                bad = True
        if bad:
            return None
        low, high = float(bounds[0]), float(bounds[1])
        if low <= 0:
            problems.add("loguniform", f"a log-uniform range needs 0 < low < high; low must be > 0, got {bounds[0]}")
            return None
        if low >= high:
            problems.add("loguniform", f"a log-uniform range needs 0 < low < high, got [{bounds[0]}, {bounds[1]}]"
                         " (to fix lr, give a list of one value, e.g. [5.0e-4])")
            return None
        return LogUniform(loguniform=(low, high))
    if isinstance(value, (list, tuple)):
        if not value:
            problems.add("", f"empty list; give {shape}")
            return None
        out, ok = [], True
        for i, v in enumerate(value):
            if not _is_number(v) or not math.isfinite(v) or v <= 0:
                problems.add(f"[{i}]", f"must be a positive finite number, got {_show(v)}")
                ok = False
            else:
                out.append(float(v))
        if ok and len(set(out)) != len(out):
            problems.add("", f"lists a value twice: {value}")
            return None
        return out if ok else None
    problems.add("", f"must be {shape}, got {_show(value)}")
    return None


def _check_K(value: Any, problems: _Problems, path: str) -> Any:
    """A non-empty list of ints >= 1 or ``{int_loguniform: [low, high]}``; normalised."""
    shape = "a non-empty list of integers >= 1, e.g. [500], or {int_loguniform: [low, high]} with 1 <= low <= high"
    if isinstance(value, IntLogUniform):
        return value
    if isinstance(value, Mapping):
        keys = list(value)
        if keys != ["int_loguniform"]:
            extra = [k for k in keys if k != "int_loguniform"]
            problems.add(_join(path, str(extra[0])) if extra else path,
                         f"unknown form; K must be {shape}" if extra else f"must be {shape}")
            return None
        bounds = value["int_loguniform"]
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
            problems.add(_join(path, "int_loguniform"), f"must be a list [low, high] of two integers, got {_show(bounds)}")
            return None
        bad = False
        for i, b in enumerate(bounds):
            if not _is_int(b) or b < 1:
                problems.add(_join(_join(path, "int_loguniform"), i), f"must be an integer >= 1, got {_show(b)}")
                bad = True
        if bad:
            return None
        if bounds[0] > bounds[1]:
            problems.add(_join(path, "int_loguniform"), f"needs 1 <= low <= high, got [{bounds[0]}, {bounds[1]}]")
            return None
        return IntLogUniform(int_loguniform=(bounds[0], bounds[1]))
    if isinstance(value, (list, tuple)):
        if not value:
            problems.add(path, f"empty list; K must be {shape}")
            return None
        ok = True
        for i, v in enumerate(value):
            if not _is_int(v) or v < 1:
                problems.add(_join(path, i), f"K must be an integer >= 1, got {_show(v)}")
                ok = False
        if ok and len(set(value)) != len(value):
            problems.add(path, f"lists a value twice: {list(value)}")
            return None
        return list(value) if ok else None
    if _is_int(value) and value >= 1:
        problems.add(path, f"must be a list, e.g. [{value}], or {{int_loguniform: [low, high]}}, got {value}")
        return None
    problems.add(path, f"must be {shape}, got {_show(value)}")
    return None


class Space(_Section):
    """What Optuna searches: the learning rate and the priors (with K for mixtures)."""

    lr: LogUniform | list[float]
    priors: dict[str, PriorOptions]

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, Space):
            return data
        problems = _Problems()
        if not isinstance(data, Mapping):
            problems.add("", f"must be a mapping with lr and priors, got {_show(data)}")
            problems.raise_if_any()
        out: dict[str, Any] = {}
        for key in data:
            if key not in ("lr", "priors"):
                problems.add(str(key), _unknown_text(key, ("lr", "priors"),
                                                     "K goes under a mixture prior: space.priors.<prior>.K"
                                                     if str(key).lower() == "k" else ""))
        for key in ("lr", "priors"):
            if key not in data:
                problems.add(key, "required field is missing" + (
                    "; e.g. lr: {loguniform: [1.0e-4, 5.0e-4]}" if key == "lr" else
                    f"; a mapping prior-name -> options, e.g. {{standard: {{}}, vampprior: {{K: [500]}}}}; "
                    f"priors: {_allowed(_priors())}"))
        if "lr" in data:
            sub = _Problems()
            out["lr"] = _check_lr(data["lr"], sub)
            for path, text in sub.items:
                problems.add(_join("lr", path) if not path.startswith("[") else "lr" + path, text)
        if "priors" in data:
            out["priors"] = _check_priors(data["priors"], problems)
        problems.raise_if_any()
        return out


def _check_priors(value: Any, problems: _Problems) -> dict[str, Any] | None:
    known = _priors()
    if not isinstance(value, Mapping):
        problems.add("priors", "must be a mapping prior-name -> options, e.g. "
                     f"{{standard: {{}}, vampprior: {{K: [500]}}}}, got {_show(value)}; priors: {_allowed(known)}")
        return None
    if not value:
        problems.add("priors", f"the space is empty: list at least one of {_allowed(known)}")
        return None
    out: dict[str, Any] = {}
    for name, options in value.items():
        path = f"priors.{name}"
        if not isinstance(name, str) or name not in known:
            if isinstance(name, str) and _SECRET_KEY.search(name):
                problems.add(path, _CREDENTIALS_HINT)
            else:
                problems.add(path, f"{_show(name)} is not a prior{_did_you_mean(name, known)}; allowed: {_allowed(known)}")
            continue
        if isinstance(options, PriorOptions):
            options = options.model_dump(exclude_none=True)
        if options is None:
            options = {}
        if isinstance(options, Mapping) and "K" in options and options["K"] is None:
            options = {k: v for k, v in options.items() if k != "K"}  # K: null = the default / none
        if not isinstance(options, Mapping):
            problems.add(path, "must be a mapping of options ({} for none"
                         + (", or {K: [500]}" if name in MIXTURE_PRIORS else "") + f"), got {_show(options)}")
            continue
        clean: dict[str, Any] = {}
        allowed = ("K", "trials") if name in MIXTURE_PRIORS else ("trials",)
        for key in options:
            if key in ("K", "trials"):
                continue
            hint = "" if name in MIXTURE_PRIORS else f"the {name} prior has no components, so its only option is trials"
            problems.add(_join(path, str(key)), _unknown_text(key, allowed, hint))
        if options.get("trials") is not None:
            trials = options["trials"]
            if not _is_int(trials) or trials < 1:
                problems.add(_join(path, "trials"), f"the trial budget of this prior's groups must be an "
                             f"integer >= 1, got {_show(trials)}")
            else:
                clean["trials"] = trials
        if name in MIXTURE_PRIORS:
            K = _check_K(options.get("K", [_DEFAULTS.K]), problems, _join(path, "K"))
            clean["K"] = K
        elif "K" in options:
            problems.add(_join(path, "K"), f"the {name} prior has no components, so K is not allowed "
                         f"(K applies to {_allowed(_mixtures())})")
        out[name] = clean
    return out


def _unknown_text(key: Any, allowed, hint: str = "") -> str:
    if isinstance(key, str) and _SECRET_KEY.search(key):
        return f"unknown field: {_CREDENTIALS_HINT}"
    text = "unknown field" + _did_you_mean(key, allowed)
    text += f"; allowed: {_allowed(allowed)}" if allowed else "; no options are allowed here"
    return text + (f"; {hint}" if hint else "")


class Fixed(_Section):
    """TrainConfig fields held fixed for every trial (defaults: TrainConfig's)."""

    epochs: int = Field(_DEFAULTS.epochs, ge=1)
    warmup: int = Field(_DEFAULTS.warmup, ge=0)
    patience: int = Field(_DEFAULTS.patience, ge=0)
    batch_size: int = Field(_DEFAULTS.batch_size, ge=1)
    z1_size: int = Field(_DEFAULTS.z1_size, ge=1)
    z2_size: int = Field(_DEFAULTS.z2_size, ge=1)
    hidden: int = Field(_DEFAULTS.hidden, ge=1)
    pseudoinputs: Literal["random", "data"] = _DEFAULTS.pseudoinputs  # type: ignore[assignment]
    train_limit: int | None = Field(_DEFAULTS.train_limit, ge=1)


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


class EarlyStopping(_Section):
    """ASHA on the validation loss (beta = 1), one step per epoch, within each group."""

    grace_period: int = Field(10, ge=1)
    reduction_factor: int = Field(3, ge=2)


def _whole_above_one(value: float) -> float:
    if value > 1 and value != int(value):
        raise PydanticCustomError(_SPEC_ERROR, "{text}", {"text": (
            f"\ta fraction of a GPU must be <= 1 (e.g. 0.25 puts four trials on one GPU); "
            f"above 1 give a whole number, got {value:g}")})
    return value


def _one_or_per_model(value: Any) -> str:
    return "per_model" if isinstance(value, Mapping) else "all"


CpuShare = Annotated[float, Field(gt=0, allow_inf_nan=False)]
GpuShare = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(_whole_above_one)]
#: One number for every model, or a mapping model -> number (its union tags never reach messages).
PerModelCpus = Annotated[Union[Annotated[CpuShare, Tag("all")], Annotated[dict[str, CpuShare], Tag("per_model")]],
                         Discriminator(_one_or_per_model)]
PerModelGpus = Annotated[Union[Annotated[GpuShare, Tag("all")], Annotated[dict[str, GpuShare], Tag("per_model")]],
                         Discriminator(_one_or_per_model)]
_UNION_TAGS = ("all", "per_model")


class Resources(_Section):
    """Per trial, for every model or per model (``gpus: {vae: 0.125, hvae: 0.25}``). Fractional
    GPUs share one device (0.25: four trials per GPU)."""

    cpus: PerModelCpus = 1.0
    gpus: PerModelGpus = 0.0

    def of(self, model: str) -> dict[str, float]:
        """Ray's resource request of one trial of `model`: {"cpu": ..., "gpu": ...}."""
        def pick(value):
            return value[model] if isinstance(value, Mapping) else value
        return {"cpu": pick(self.cpus), "gpu": pick(self.gpus)}


class Evaluation(_Section):
    """The champions' test log-likelihood by importance sampling."""

    samples: int = Field(_DEFAULTS.samples, ge=1)
    test_limit: int | None = Field(_DEFAULTS.test_limit, ge=1)


_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@")


def _no_userinfo(value: str | None) -> str | None:
    if value is not None and _USERINFO.match(value):
        raise PydanticCustomError(_SPEC_ERROR, "{text}", {"text": f"\tholds a password (user:password@ in the URI); "
                                                          f"{_CREDENTIALS_HINT}"})
    if value is not None and not value.strip():
        raise PydanticCustomError(_SPEC_ERROR, "{text}", {"text": "\tmust not be empty; write null for the default"})
    return value


class Tracking(_Section):
    """MLflow. ``uri: null`` is the embedded default; --tracking-uri and MLFLOW_TRACKING_URI win."""

    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        return _no_userinfo(value)


class Storage(_Section):
    """Ray storage: a local folder or s3://bucket/prefix. ``path: null`` is the embedded default;
    --storage wins."""

    path: str | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        return _no_userinfo(value)


_SECTIONS = ("fixed", "search", "early_stopping", "resources", "evaluation", "tracking", "storage")


class StudySpec(_Section):
    """One study: what to search, what to hold fixed, how to search and where results go."""

    name: str
    dataset: str
    models: list[str]
    space: Space
    fixed: Fixed = Fixed()
    search: Search = Search()
    early_stopping: EarlyStopping = EarlyStopping()
    resources: Resources = Resources()
    evaluation: Evaluation = Evaluation()
    tracking: Tracking = Tracking()
    storage: Storage = Storage()

    _source: Path | None = PrivateAttr(default=None)

    # ---------------------------------------------------------------- validation

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """``fixed:`` with nothing under it (YAML null) means the defaults."""
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise PydanticCustomError(_SPEC_ERROR, "{text}", {"text": (
                f"\t{value!r} is not a valid study name: it names the MLflow experiment and the storage folder, "
                "so use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(no spaces or slashes)")})
        return value

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        known = _datasets()
        if value not in known:
            raise PydanticCustomError(_SPEC_ERROR, "{text}", {"text": (
                f"\t{value!r} is not a dataset{_did_you_mean(value, known)}; allowed: {_allowed(known)}")})
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        known = _models()
        problems = _Problems()
        if not value:
            problems.add("", f"the space is empty: list at least one of {_allowed(known)}")
        seen: set[str] = set()
        for i, model in enumerate(value):
            if model not in known:
                problems.add(f"[{i}]", f"{model!r} is not a model{_did_you_mean(model, known)}; allowed: {_allowed(known)}")
            elif model in seen:
                problems.add(f"[{i}]", f"{model!r} is listed twice")
            seen.add(model)
        problems.raise_if_any()
        return value

    @model_validator(mode="after")
    def _check_together(self) -> "StudySpec":
        problems = _Problems()
        if self.early_stopping.grace_period > self.fixed.epochs:
            problems.add("early_stopping.grace_period", f"must be <= fixed.epochs ({self.fixed.epochs}), "
                         f"got {self.early_stopping.grace_period}")
        for field in ("cpus", "gpus"):
            per_model = getattr(self.resources, field)
            if not isinstance(per_model, Mapping):
                continue
            for model in per_model:
                if model not in self.models:
                    problems.add(f"resources.{field}.{model}", f"{model!r} is not a model of this study; "
                                 f"its models: {', '.join(self.models)}")
            missing = [m for m in self.models if m not in per_model]
            if missing:
                problems.add(f"resources.{field}", f"give every model of the study a value (missing: "
                             f"{', '.join(missing)}), or one number for all")
        problems.raise_if_any()
        return self

    # ---------------------------------------------------------------- accessors

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

    def _options(self, prior: str) -> PriorOptions:
        try:
            return self.space.priors[prior]
        except KeyError:
            raise KeyError(f"prior {prior!r} is not in study {self.name!r}; its priors: {', '.join(self.priors())}") from None

    def train_config(self, *, model: str, prior: str, lr: float, K: int | None, seed: int) -> TrainConfig:
        """The TrainConfig of one trial: the sampled values plus everything held fixed.

        K is TrainConfig's default when None or when the prior is not a mixture (it ignores K).
        """
        if model not in self.models:
            raise ValueError(f"model {model!r} is not in study {self.name!r}; its models: {', '.join(self.models)}")
        self._options(prior)
        if K is None or prior not in MIXTURE_PRIORS:
            K = _DEFAULTS.K
        config = TrainConfig(
            dataset=self.dataset,
            model=model,
            prior=prior,
            K=K,
            lr=lr,
            seed=seed,
            **self.fixed.model_dump(),
            samples=self.evaluation.samples,
            test_limit=self.evaluation.test_limit,
            device="auto",
        )
        return config.validate()


# --------------------------------------------------------------------------- reading files


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):  # noqa: D401
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:
                    duplicate = False
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark)
                try:
                    seen[key] = True
                except TypeError:
                    pass
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_space(path: str | Path) -> StudySpec:
    """Read, validate and return the study in `path`; any problem raises InputError naming the
    file, the field and what is allowed (one line per problem)."""
    label = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a folder, not a search-space file") from None
    except UnicodeDecodeError:
        raise InputError(f"{label}: not a UTF-8 text file") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        context = exc.context or ""
        if context and exc.context_mark is not None and mark is not None and exc.context_mark.line != mark.line:
            context += f" started on line {exc.context_mark.line + 1}"
        problem = ": ".join(str(p) for p in (context, exc.problem) if p)
        raise InputError(f"{label}: {where}invalid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: invalid YAML ({exc})") from None
    if data is None:
        raise InputError(f"{label}: the file is empty; the file must hold a mapping at the top level "
                         "(name, dataset, models, space, ...)")
    if not isinstance(data, dict):
        raise InputError(f"{label}: the file must hold a mapping at the top level "
                         f"(name, dataset, models, space, ...), not {_show(data)}")
    return parse_space(data, label).with_source(file)


def parse_space(data: Any, label: str = "<spec>") -> StudySpec:
    """Validate a mapping already read; errors name `label` like a file."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            for path, text in _describe(error):
                lines.append(f"{label}: {path}: {text}")
        raise InputError("\n".join(dict.fromkeys(lines))) from None


# --------------------------------------------------------------------------- error messages


def _loc_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path = _join(path, part)
    return path


def _without_union_tags(loc: tuple) -> tuple:
    """pydantic names the member of a tagged union in `loc`; the user never wrote it."""
    return tuple(part for i, part in enumerate(loc)
                 if not (part in _UNION_TAGS and i > 0 and loc[i - 1] in ("cpus", "gpus")))


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class whose field set applies at `loc` (for 'unknown field; allowed: ...')."""
    cls: type[BaseModel] = StudySpec
    i = 0
    while i < len(loc):
        key = loc[i]
        if cls is Space and key == "priors":
            cls, i = PriorOptions, i + 2
            continue
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls, i = ann, i + 1
    return cls


#: Fields of earlier versions of the format, and what replaced them.
_RENAMED = {
    "search.trials_per_model": "the budget is per (model, prior) group now: search.trials_per_group "
                               "(or trials under a prior in space.priors)",
}

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "bool_type": "true or false",
    "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}

_TOP_HINTS = {
    "name": lambda: "the study name (MLflow experiment, storage folder): 1-64 letters, digits, '_', '.', '-'",
    "dataset": lambda: f"one of {_allowed(_datasets())}",
    "models": lambda: f"a list of one or more of {_allowed(_models())}",
    "space": lambda: "a mapping with lr and priors, e.g. {lr: {loguniform: [1.0e-4, 5.0e-4]}, priors: {standard: {}}}",
}


def _describe(error: dict) -> list[tuple[str, str]]:
    """One pydantic error -> (dotted path, message) pairs in this module's style."""
    loc = _without_union_tags(tuple(error["loc"]))
    path = _loc_path(loc)
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == _SPEC_ERROR:
        pairs = []
        for line in str(ctx.get("text", error["msg"])).split("\n"):
            rel, _, text = line.partition("\t")
            if not loc:  # checks across sections give full paths
                pairs.append((rel, text))
            elif rel.startswith("["):
                pairs.append((path + rel, text))
            else:
                pairs.append((_join(path, rel) if rel else path, text))
        return pairs
    if kind == "extra_forbidden" and path in _RENAMED:
        return [(path, f"unknown field; {_RENAMED[path]}")]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = list(owner.model_fields) if owner is not None else []
        hint = ""
        if len(loc) == 1:  # a section's field written at the top level, e.g. epochs: 2000
            homes = [name for name in _SECTIONS if loc[0] in StudySpec.model_fields[name].annotation.model_fields]
            hint = f"it belongs under {homes[0]}: ({homes[0]}.{loc[0]})" if homes else ""
        return [(path, _unknown_text(loc[-1], allowed, hint))]
    if kind == "missing":
        hint = _TOP_HINTS.get(path)
        return [(path, "required field is missing" + (f"; {hint()}" if hint else ""))]
    if kind in _TYPE_WORDS:
        return [(path, f"must be {_TYPE_WORDS[kind]}, got {_show(value)}")]
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return [(path, f"must be {op} {bound}, got {_show(value)}")]
    if kind == "literal_error":
        return [(path, f"must be {ctx.get('expected')}, got {_show(value)}")]
    if kind in ("finite_number",):
        return [(path, f"must be a finite number, got {_show(value)}")]
    return [(path or "(top level)", str(error["msg"]))]
