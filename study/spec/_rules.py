"""The rules of a search-space file that are more than a bound: names from the registries, lists
without repeats, ranges, GPU shares, URIs without passwords. Each raises
:class:`PydanticCustomError` with a message written for the user; a rule about one element of
what it checks names it in the error's context as ``at`` (``[1]`` for a model listed twice).

Names (datasets, models, priors) are looked up when a file is validated: the registries import
torch, which reading a schema should not need.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError


#: Keys that look like credentials: refused with a pointer to the environment variables.
SECRET_KEY = re.compile(
    r"secret|password|passwd|token|credential|access[_-]?key|api[_-]?key|private[_-]?key|^aws_|session[_-]?key",
    re.IGNORECASE)
CREDENTIALS_HINT = (
    "credentials are never read from the search-space file; remove this key and set them in the "
    "environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_ENDPOINT_URL) "
    "for S3 storage, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
    "for the MLflow tracking server")


def listing(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def did_you_mean(word: Any, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.75) if isinstance(word, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def dataset_names() -> list[str]:
    from trainables.data import DATASETS
    return list(DATASETS)


def model_names() -> list[str]:
    from trainables.models import MODELS
    return list(MODELS)


def prior_names() -> list[str]:
    from trainables.priors import PRIORS
    return list(PRIORS)


# --------------------------------------------------------------------------- reusable rules


class OneOf:
    """A name from a registry: ``Annotated[str, AfterValidator(OneOf("dataset", dataset_names))]``."""

    def __init__(self, noun: str, names: Callable[[], list[str]]):
        self.noun, self.names = noun, names

    def __call__(self, value: str) -> str:
        names = self.names()
        if value not in names:
            raise PydanticCustomError("unknown_name", f"{value!r} is not a {self.noun}{did_you_mean(value, names)}; "
                                      f"allowed: {listing(names)}")
        return value


def not_empty(names: Callable[[], list[str]]) -> Callable:
    """The models or priors of a study: at least one of `names` (looked up when needed)."""
    def check(value):
        if not value:
            raise PydanticCustomError("empty", f"the space is empty: list at least one of {listing(names())}")
        return value
    return check


def listed_once(values: list) -> list:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise PydanticCustomError("listed_twice", "{value} is listed twice", {"at": f"[{i}]", "value": repr(value)})
    return values


def none_is_empty(value: Any) -> Any:
    """``fixed:`` with nothing under it (YAML null) means the section's defaults."""
    return {} if value is None else value


def study_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise PydanticCustomError("study_name", (
            f"{value!r} is not a valid study name: it names the MLflow experiment and the storage folder, so use "
            "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit (no spaces or slashes)"))
    return value


def log_range(bounds: list[float]) -> list[float]:
    low, high = bounds
    if low <= 0:
        raise PydanticCustomError("range", f"a log-uniform range needs 0 < low < high; low must be > 0, got {low:g}")
    if low >= high:
        raise PydanticCustomError("range", f"a log-uniform range needs 0 < low < high, got {bounds} (to fix lr, give "
                                  "a list of one value, e.g. [5.0e-4])")
    return bounds


def int_range(bounds: list[int]) -> list[int]:
    if bounds[0] > bounds[1]:
        raise PydanticCustomError("range", f"needs 1 <= low <= high, got {bounds}")
    return bounds


def positive(value: float) -> float:
    if value <= 0:
        raise PydanticCustomError("positive", f"must be a positive finite number, got {value:g}")
    return value


def whole_above_one(value: float) -> float:
    if value > 1 and value != int(value):
        raise PydanticCustomError("gpu_share", "a fraction of a GPU must be <= 1 (e.g. 0.25 puts four trials on one "
                                  f"GPU); above 1 give a whole number, got {value:g}")
    return value


def no_password(value: str | None) -> str | None:
    if value is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@", value):
        raise PydanticCustomError("credentials", f"holds a password (user:password@ in the URI); {CREDENTIALS_HINT}")
    if value is not None and not value.strip():
        raise PydanticCustomError("blank", "must not be empty; write null for the default")
    return value


#: The members of the schema's unions: pydantic puts them in an error's location, the user never
#: wrote them (study.spec._messages leaves them out).
RANGE, LIST, ONE, PER_MODEL = UNION_TAGS = ("(range)", "(list)", "(one)", "(per model)")


def shape(value: Any) -> str | None:
    """The member of a range-or-list union that `value` is written as (None: neither)."""
    if isinstance(value, (Mapping, BaseModel)):
        return RANGE
    return LIST if isinstance(value, list) else None


def one_or_per_model(value: Any) -> str:
    return PER_MODEL if isinstance(value, Mapping) else ONE


def distinct_list(item: Any, empty: str) -> Any:
    """A non-empty list of distinct `item`s."""
    def check(value: list) -> list:
        if not value:
            raise PydanticCustomError("empty", empty)
        return listed_once(value)
    return Annotated[list[item], AfterValidator(check)]
