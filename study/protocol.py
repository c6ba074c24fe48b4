"""The evaluation protocol of a registered test log-likelihood, and the champion-alias rule.

Test log-likelihoods compare only under one protocol (importance samples, test-set size,
training-set size). Registration writes a version's protocol as tags (`Protocol.tags`); the
alias rule (`takes_alias`) and `study report` read them back (`Protocol.from_tags`). A leaf
module (no Ray, no torch), so that the commands that only read can use it.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainables.data import DATASETS

#: Importance samples of the paper's test log-likelihood.
PAPER_SAMPLES = 5000


@dataclass(frozen=True)
class Protocol:
    """How a test log-likelihood was measured."""

    samples: int
    test_size: int
    train_size: int
    full: bool

    @classmethod
    def of(cls, dataset: str, samples: int, test_size: int, train_size: int) -> "Protocol":
        train_all, _, test_all = DATASETS[dataset].sizes
        return cls(samples, test_size, train_size,
                   samples >= PAPER_SAMPLES and test_size == test_all and train_size == train_all)

    def tags(self) -> dict[str, str]:
        return {"protocol": "full" if self.full else "reduced", "protocol.samples": str(self.samples),
                "protocol.test_size": str(self.test_size), "protocol.train_size": str(self.train_size)}

    @classmethod
    def from_tags(cls, tags: dict) -> "Protocol | None":
        """The protocol a version was registered with (None for a version without these tags)."""
        try:
            return cls(int(tags["protocol.samples"]), int(tags["protocol.test_size"]),
                       int(tags["protocol.train_size"]), tags["protocol"] == "full")
        except (KeyError, ValueError):
            return None


def takes_alias(new: Protocol, new_ll: float, holder: Protocol | None, holder_ll: float | None,
                held: bool = True) -> bool:
    """Whether a new version takes the `champion` alias from the version that holds it (`held`
    False: nobody does). Same protocol: only on a better test LL. Another protocol: only a full
    one over a reduced (or unknown) one."""
    if not held:
        return True
    if holder is not None and (new.samples, new.test_size, new.train_size) == (
            holder.samples, holder.test_size, holder.train_size):
        return holder_ll is None or new_ll > holder_ll
    return new.full and not (holder is not None and holder.full)
