"""pydantic's errors as the user's lines: ``file: dotted.field: what is allowed``.

Messages of our own rules (:mod:`study.spec._rules`) are used as they are; pydantic's built-in
errors are worded here, asking the section that holds the field what it accepts. A value is shown
as the user wrote it (YAML-ish), shortened.
"""
from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from study.spec._rules import UNION_TAGS
from study.spec._schema import StudySpec, _Section

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a finite number", "float_parsing": "a finite number", "finite_number": "a finite number",
    "string_type": "a string", "bool_type": "true or false", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_LENGTHS = {"too_short": "at least", "too_long": "at most"}


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, None as null, short lists in full."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        if len(value) <= 6 and all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
            return "[" + ", ".join(show(v) for v in value) + "]"
        return "a list"
    return "a value of another kind"


def lines(label: str, error: ValidationError) -> list[str]:
    """One line per problem, in the order pydantic found them, each once."""
    return list(dict.fromkeys(f"{label}: {_path(e)}: {_text(e)}" for e in _relevant(error.errors(include_url=False))))


def _relevant(errors: list[dict]) -> list[dict]:
    """Without what follows from another error: the value under a key that is itself refused (a
    prior that does not exist; its value may be a secret), and a field "missing" beside a key
    that is not allowed (the user misspelled it: one line, with did-you-mean)."""
    refused = {tuple(e["loc"][:-1]) for e in errors if e["loc"][-1:] == ("[key]",)}
    misspelt = {tuple(e["loc"][:-1]) for e in errors if e["type"] == "extra_forbidden"}
    return [e for e in errors if e["loc"][-1:] == ("[key]",)
            or not any(tuple(e["loc"][:len(r)]) == r for r in refused)
            and not (e["type"] == "missing" and tuple(e["loc"][:-1]) in misspelt)]


def _keys(loc: tuple) -> tuple:
    """The keys the user wrote: without the members of unions and the dict-key marker."""
    return tuple(part for part in loc if part not in UNION_TAGS and part != "[key]")


def _path(error: dict) -> str:
    path = ""
    for key in _keys(tuple(error["loc"])):
        path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
    at = (error.get("ctx") or {}).get("at", "")
    if at:
        path = f"{path}{at}" if at.startswith("[") else f"{path}.{at}" if path else at
    return path or "(top level)"


def _text(error: dict) -> str:
    kind, value, ctx, keys = error["type"], error.get("input"), error.get("ctx") or {}, _keys(tuple(error["loc"]))
    if kind == "extra_forbidden":
        section, parent = _section_at(keys[:-1])
        return section.unknown_field(keys[-1], parent)
    if kind == "missing":
        return "required field is missing" + _what_it_holds(keys)
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {show(value)}" + _what_it_holds(keys)
    if kind in _BOUNDS:
        bound = next(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
        return f"must be {_BOUNDS[kind]} {int(bound) if float(bound).is_integer() else bound}, got {show(value)}"
    if kind in _LENGTHS:
        return f"must hold {_LENGTHS[kind]} {ctx.get('min_length', ctx.get('max_length'))} values, got {show(value)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {show(value)}"
    if kind == "form":
        return f"{error['msg']}, got {show(value)}"
    return error["msg"]


def _what_it_holds(keys: tuple) -> str:
    """What the field at `keys` holds, as its section describes it, as a "; ..." suffix (or "")."""
    hint = _section_at(keys[:-1])[0].describe(keys[-1]) if keys else ""
    return f"; {hint}" if hint else ""


def _section_at(keys: tuple) -> tuple[type[_Section], Any]:
    """The section whose fields apply under `keys`, and the key it is under (for the options of a
    prior: the prior's name)."""
    section: type[_Section] = StudySpec
    parent: Any = None
    mapping = False  # the next key is a key of a mapping field (a prior's name, a model's)
    for key in keys:
        if mapping:
            parent, mapping = key, False
            continue
        info = section.model_fields.get(key) if isinstance(key, str) else None
        if info is None:
            break
        section, parent, mapping = _model_in(info.annotation) or section, key, _holds_mapping(info.annotation)
    return section, parent


def _holds_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict or any(_holds_mapping(a) for a in typing.get_args(annotation))


def _model_in(annotation: Any) -> type[_Section] | None:
    """The section type inside an annotation (through Annotated, unions, dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
