"""A restricted unpickler: numpy arrays inside lists, tuples and dicts, nothing else.

Loading a pickle runs whatever callables it names, so the dataset pickles (Frey Faces,
Histopathology) are read with :func:`safe_load`, whose ``find_class`` only resolves the
globals numpy needs to rebuild arrays. Pickles written by numpy 1 name ``numpy.core.*``;
those names are mapped to ``numpy._core.*`` under numpy 2.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainables.errors import DataError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


def _numpy_module(module: str) -> str:
    """Map ``numpy.core.x`` to ``numpy._core.x`` when running numpy 2."""
    if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
        return "numpy._core" + module[len("numpy.core") :]
    return module


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._source}: "
                "only numpy arrays in lists and dicts are allowed"
            )
        return getattr(importlib.import_module(_numpy_module(module)), name)


def safe_load(file: IO[bytes], source: str | Path) -> Any:
    """Unpickle ``file`` (Python 2 or 3 pickle) with :class:`RestrictedUnpickler`.

    ``source`` names the file in error messages. Raises :class:`DataError` for a refused
    global or an unreadable pickle.
    """
    try:
        return RestrictedUnpickler(file, str(source)).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a corrupt pickle is a data error
        raise DataError(f"cannot unpickle {source}: not a valid pickle ({exc})") from exc
