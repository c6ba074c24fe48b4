"""A call made again while its server does not answer: the one waiting loop of the trials'
storage (trainables.tune_trainable) and of the study's ledger (study.ledger)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def patiently(call: Callable[[], T], *, unanswered: Callable[[Exception], bool], seconds: float, first: float,
              longest: float, waiting: Callable[[Exception, float], None] | None = None) -> T:
    """``call()``, made again while its error says the server did not answer
    (``unanswered(error)``), after ``first`` seconds, doubling up to ``longest``, for up to
    ``seconds``; then that error is raised. Any other error is raised at once. ``waiting(error,
    pause)`` hears of each wait."""
    deadline, pause = time.monotonic() + seconds, first
    while True:
        try:
            return call()
        except Exception as error:
            if not unanswered(error) or time.monotonic() + pause > deadline:
                raise
            if waiting is not None:
                waiting(error, pause)
            time.sleep(pause)
            pause = min(2 * pause, longest)
