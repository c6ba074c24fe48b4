"""Reading a search-space file: YAML with line numbers, 1e-4 as a float, duplicate keys refused;
every problem one :class:`~trainables.errors.InputError` line naming the file and the field."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from study.spec._messages import lines, show
from study.spec._schema import StudySpec
from trainables.errors import InputError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4) and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set[str] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str):
                    raise yaml.constructor.ConstructorError(
                        None, None, f"a key must be a name, got {key!r} (quote it if it is one)", key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))

_TOP = "the file must hold a mapping at the top level (name, dataset, models, space, ...)"


def load_space(path: str | Path) -> StudySpec:
    """Read, validate and return the study in `path`; any problem raises InputError naming the
    file, the field and what is allowed (one line per problem)."""
    label, file = str(path), Path(path)
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
        raise InputError(f"{label}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: invalid YAML ({exc})") from None
    if data is None:
        raise InputError(f"{label}: the file is empty; {_TOP}")
    if not isinstance(data, dict):
        raise InputError(f"{label}: {_TOP}, not {show(data)}")
    return parse_space(data, label).with_source(file)


def parse_space(data: Any, label: str = "<spec>") -> StudySpec:
    """Validate a mapping already read; errors name `label` like a file."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise InputError("\n".join(lines(label, exc))) from None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    context = exc.context or ""
    if context and exc.context_mark is not None and mark is not None and exc.context_mark.line != mark.line:
        context += f" started on line {exc.context_mark.line + 1}"
    problem = ": ".join(str(p) for p in (context, exc.problem) if p)
    return (f"line {mark.line + 1}: " if mark is not None else "") + f"invalid YAML ({problem})"
