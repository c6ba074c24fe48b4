"""The trial's storage patience: a storage call is made again while a remote storage does not
answer, never when it refuses or for a local disk's error, and not beyond the wait."""
from __future__ import annotations

import errno

import pytest

from trainables import patience, tune_trainable


def failing(times: int, error: OSError):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"
    return call, calls


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(patience.time, "sleep", lambda seconds: None)


def test_a_storage_that_comes_back_is_waited_for():
    call, calls = failing(3, OSError("AWS Error NETWORK_CONNECTION during HeadObject operation"))
    assert tune_trainable.patiently("checkpoint", call) == "done" and len(calls) == 4


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError("When reading information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject"),
    OSError("Bucket 'vamp-study' not found"),
])
def test_a_refusal_or_a_local_disk_error_is_raised_at_once(error):
    call, calls = failing(1, error)
    with pytest.raises(OSError):
        tune_trainable.patiently("checkpoint", call)
    assert len(calls) == 1


def test_a_storage_gone_for_longer_than_the_wait_is_an_error(monkeypatch):
    monkeypatch.setattr(tune_trainable, "STORAGE_OUTAGE_SECONDS", 0.0)
    call, calls = failing(10, OSError("AWS Error NETWORK_CONNECTION"))
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        tune_trainable.patiently("checkpoint", call)
    assert len(calls) == 1
