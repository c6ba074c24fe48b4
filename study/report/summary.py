"""The report's content as plain data (what report.json holds): per (model, prior) group of a study,
its champion's number beside the paper's, the difference, the evaluation protocol and the group's
trials. Made from a `StudyRecord` and the paper's table; no I/O."""
from __future__ import annotations

import math
from collections import Counter

from study.report.collect import Champion, StudyRecord
from study.protocol import Protocol
from study.report.paper import HIGHER_IS_BETTER, METRIC, PaperTable, better, difference

#: The figures the report draws (file names in the report folder).
FIGURES = {"validation_loss": "validation_loss.png", "vs_paper": "vs_paper.png"}


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def champion_value(tags: dict[str, str], unit: str) -> float | None:
    """The registered version's number in the paper's unit: its `test_ll` tag (nats) or its
    `bits_per_dim` tag (gray data), as registration wrote it."""
    return _number(tags.get(METRIC[unit]))


def protocol(tags: dict[str, str]) -> dict | None:
    """The evaluation protocol a version was registered with (None for a version without it)."""
    p = Protocol.from_tags(tags)
    return None if p is None else {"protocol": "full" if p.full else "reduced", "samples": p.samples,
                                   "test_size": p.test_size, "train_size": p.train_size}


def _champion(champion: Champion | None, unit: str) -> dict:
    if champion is None:
        return {"champion": None, "ours": None, "test_ll": None, "bits_per_dim": None, "protocol": None,
                "epochs": None, "best_epoch": None, "stop_reason": None}
    tags = champion.tags
    return {"champion": {"registered_model": champion.registered_model, "version": champion.version,
                         "trial": tags.get("trial_id"), "run_id": champion.run_id,
                         "val_loss": _number(tags.get("val_loss"))},
            "ours": champion_value(tags, unit), "test_ll": _number(tags.get("test_ll")),
            "bits_per_dim": _number(tags.get("bits_per_dim")), "protocol": protocol(tags),
            "epochs": _int(tags.get("epochs")), "best_epoch": _int(tags.get("best_epoch")),
            "stop_reason": tags.get("stop_reason")}


def summarize(record: StudyRecord, table: PaperTable) -> dict:
    """The report of `record` against `table` (the layout of report.json)."""
    unit = table.unit(record.dataset)
    champions = {(c.model, c.prior): c for c in record.champions}
    groups = []
    for model, prior in record.groups():
        trials = [t for t in record.trials if (t.model, t.prior) == (model, prior)]
        row = {"model": model, "prior": prior, "trials": len(trials),
               "stop_reasons": dict(sorted(Counter(t.stop_reason or "running" for t in trials).items())),
               **_champion(champions.get((model, prior)), unit)}
        paper = table.cell(record.dataset, model, prior)
        diff = difference(row["ours"], paper)
        row.update(paper=paper, difference=diff, better=better(unit, diff),
                   paper_alternative=table.alternative(record.dataset, model, prior))
        groups.append(row)
    return {"study": record.study, "dataset": record.dataset, "dataset_label": table.label(record.dataset),
            "unit": unit, "metric": METRIC[unit], "higher_is_better": HIGHER_IS_BETTER[unit],
            "unit_meaning": table.units[unit], "difference": "ours - paper, in the unit",
            "tracking_uri": record.tracking_uri, "parent_run_id": record.parent_run_id,
            "paper": {**table.source, "notes": list(table.notes)},
            "groups": groups, "trials": len(record.trials), "champions": len(champions),
            "figures": dict(FIGURES)}
