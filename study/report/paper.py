"""The paper's Table 1 (Tomczak & Welling, AISTATS 2018), as package data: the number of each
(dataset, model, prior) cell the paper reports, its unit, and how a study's number compares.

Units: `nats` (test log-likelihood per image, higher is better) for the binary datasets,
`bits/dim` (negative log-likelihood per dimension, lower is better) for the gray ones (Frey Faces,
Histopathology). A difference is always *ours - paper* in the cell's unit; whether that is better
depends on the unit (`better`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

#: The units of the table, and whether a higher number is the better one.
HIGHER_IS_BETTER = {"nats": True, "bits/dim": False}

#: The registered version's tag (and run metric) that holds a number in each unit.
METRIC = {"nats": "test_ll", "bits/dim": "bits_per_dim"}


@dataclass(frozen=True)
class PaperTable:
    """The paper's cells: dataset -> model -> prior -> number (absent where the paper has none)."""

    source: dict
    units: dict[str, str]  # unit -> what it means
    datasets: dict[str, dict]  # dataset -> {label, unit, cells}
    alternatives: dict[str, dict]
    notes: tuple[str, ...]

    def unit(self, dataset: str) -> str:
        """`nats` or `bits/dim`: the unit in which the paper reports `dataset` (nats where the
        paper has no row for it: the binary-data convention)."""
        return self.datasets.get(dataset, {}).get("unit", "nats")

    def label(self, dataset: str) -> str:
        return self.datasets.get(dataset, {}).get("label", dataset)

    def cell(self, dataset: str, model: str, prior: str) -> float | None:
        """The paper's number for (dataset, model, prior), or None where the paper has none."""
        value = self.datasets.get(dataset, {}).get("cells", {}).get(model, {}).get(prior)
        return None if value is None else float(value)

    def alternative(self, dataset: str, model: str, prior: str) -> dict | None:
        """Another number the paper gives for the same cell, with where (see the table's notes)."""
        return self.alternatives.get(f"{dataset}/{model}/{prior}")

    def citation(self) -> str:
        s = self.source
        return f"{s['authors']}, \"{s['title']}\", {s['venue']}, arXiv:{s['arxiv']}"


@lru_cache(maxsize=1)
def paper_table() -> PaperTable:
    """The table shipped with the package (study/report/paper_table1.json)."""
    data = json.loads(resources.files("study.report").joinpath("paper_table1.json").read_text(encoding="utf-8"))
    return PaperTable(data["source"], data["units"], data["datasets"], data.get("alternatives", {}),
                      tuple(data.get("notes", ())))


def difference(ours: float | None, paper: float | None) -> float | None:
    """ours - paper, in the cell's unit; None when either is missing."""
    if ours is None or paper is None:
        return None
    return ours - paper


def better(unit: str, diff: float | None) -> bool | None:
    """Whether a difference (ours - paper) in `unit` means ours is the better number: a higher
    log-likelihood in nats, a lower bits/dim. None when there is no difference to judge, or it is 0."""
    if diff is None or diff == 0:
        return None
    return diff > 0 if HIGHER_IS_BETTER[unit] else diff < 0
