"""Which processes a step of a test started, seen from outside: a snapshot of every process on
the machine before the step, compared with the processes after it (psutil, by PID and start
time). Independent of the stack's own bookkeeping (study.stack.process), so a test of stopping
does not check the stopping code with itself. The tests run one at a time (CI does): a process
that something else starts meanwhile counts too."""
from __future__ import annotations

import psutil


def snapshot() -> set[tuple[int, float]]:
    """Every process now, as (PID, start time)."""
    return {(p.pid, p.info["create_time"]) for p in psutil.process_iter(["create_time"])}


def alive(processes) -> list[psutil.Process]:
    """Those of ``processes`` still running (the same process, not a later one with its PID; not
    a zombie)."""
    out = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def started_since(before: set[tuple[int, float]]) -> list[psutil.Process]:
    """The live processes that were not running at ``before`` (see :func:`snapshot`)."""
    return alive(p for p in psutil.process_iter(["create_time"]) if (p.pid, p.info["create_time"]) not in before)
