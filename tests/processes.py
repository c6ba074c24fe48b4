"""Which processes a step of a test started, seen from outside: a snapshot of every process on
the machine before the step, compared with the processes after it (psutil, by PID and start
time). Independent of the stack's own bookkeeping (study.stack.process), so a test of stopping
does not check the stopping code with itself. Processes of other programs' trees are left out;
an orphan (adopted by init, as daemons are) counts, whoever started it."""
from __future__ import annotations

import psutil


def snapshot() -> dict[int, float]:
    """Every process now: PID -> start time."""
    return {p.pid: p.info["create_time"] for p in psutil.process_iter(["create_time"])}


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


def started_since(before: dict[int, float]) -> list[psutil.Process]:
    """The live processes that were not running at ``before`` (see :func:`snapshot`; a start
    time may move by a second with the wall clock), started by this test process or its
    descendants, or orphaned."""
    new = {p.pid: p for p in psutil.process_iter(["create_time", "ppid"])
           if abs(before.get(p.pid, -10.0) - p.info["create_time"]) > 1.0}
    me = psutil.Process().pid

    def ours(proc: psutil.Process) -> bool:
        parent = proc.info["ppid"]
        while parent in new:
            parent = new[parent].info["ppid"]
        return parent in (me, 1)

    return alive(p for p in new.values() if ours(p))
