"""A driver's heartbeat, for telling from another machine whether it still runs.

A driver records its run in the study's manifest with its host and pid; on its own machine a
resume can ask the operating system whether that process lives. From another machine (a RayJob
retried on a new Ray cluster, a resume from a laptop) it cannot, so while a driver runs it
rewrites `driver.json` in the study's folder every BEAT_SECONDS with a growing count. Whoever
wants to know watches that count for GONE_AFTER_SECONDS: it moved, the driver runs; it did not,
the driver is gone. Only the count is compared, never clocks, so the two machines' clocks may
disagree.

A driver that could not beat for that long (its storage unreachable from its machine only) may be
taken for gone while it runs. So each beat also reads the study's record: once its last run is
another driver's, this one is superseded and stops (`on_superseded`), and its trials are the new
driver's to continue.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from study.manifest import Beat, Run, StudyFolder

BEAT_SECONDS = 10.0
#: Long enough for three beats: a slow write or a short storage outage does not look like death.
GONE_AFTER_SECONDS = 35.0


class Heartbeat:
    """Beats for `run` from a daemon thread between start() and stop(); calls `on_superseded` (once,
    from that thread) when the study's record says another driver has taken the study over."""

    def __init__(self, folder: StudyFolder, run: Run, every: float = BEAT_SECONDS,
                 on_superseded: Callable[[], None] | None = None):
        self.folder, self.run, self.every, self.on_superseded = folder, run, every, on_superseded
        self.beat = Beat(run=run.number, host=run.host, pid=run.pid, count=0)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_done, name="vamp-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._write()  # at once: a driver that dies in its first seconds has beaten
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more beats; waits a few seconds for a write in flight, not for one stuck on a storage
        outage (a beat written after the run's end says nothing: the run is no longer running)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat_until_done(self) -> None:
        while not self._done.wait(self.every):
            self._write()
            if self.on_superseded is not None and self._superseded():
                self.on_superseded()
                return

    def _superseded(self) -> bool:
        try:
            return self.folder.superseded(self.run)
        except Exception:  # noqa: BLE001 - storage briefly unreachable: ask at the next beat
            return False

    def _write(self) -> None:
        self.beat.count += 1
        try:
            self.folder.write_beat(self.beat)
        except Exception:  # noqa: BLE001 - storage briefly unreachable: the next beat tries again
            pass


def driver_gone(folder: StudyFolder, run: Run, wait: float = GONE_AFTER_SECONDS, poll: float = 2.0) -> bool | None:
    """Whether the driver of `run` has stopped beating: False as soon as its count moves, True when
    it stays put for `wait` seconds, None when that run never beat (a study recorded before
    heartbeats, or whose storage lost the file): nothing to tell from."""
    def count() -> int | None:
        beat = folder.read_beat()
        return beat.count if beat is not None and (beat.run, beat.host, beat.pid) == (run.number, run.host, run.pid) else None

    first = count()
    if first is None:
        return None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        if count() != first:
            return False
    return True
