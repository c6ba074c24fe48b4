"""The report as text: report.md (Markdown, for people and MLflow's artifact view) and
report.json (the summary as it is), plus the cell formats the terminal table shares."""
from __future__ import annotations

import json

#: Decimals of a number in each unit (the paper gives two; bits/dim differ in the third).
DECIMALS = {"nats": 2, "bits/dim": 3}

DASH = "-"


def number(value: float | None, unit: str) -> str:
    return DASH if value is None else f"{value:.{DECIMALS[unit]}f}"


def signed(value: float | None, unit: str) -> str:
    return DASH if value is None else f"{value:+.{DECIMALS[unit]}f}"


def verdict(row: dict) -> str:
    """`better`, `worse` or `same` than the paper (the unit's direction), or '' without a difference."""
    if row["difference"] is None:
        return ""
    return {True: "better", False: "worse", None: "same"}[row["better"]]


def protocol_text(row: dict) -> str:
    p = row["protocol"]
    if p is None:
        return DASH
    return f"{p['protocol']}: S={p['samples']}, test {p['test_size']}, train {p['train_size']}"


def epochs_text(row: dict) -> str:
    return DASH if row["epochs"] is None else f"{row['epochs']} (best {row['best_epoch']})"


def stop_text(row: dict) -> str:
    return DASH if row["stop_reason"] is None else row["stop_reason"].replace("_", " ")


def champion_text(row: dict) -> str:
    c = row["champion"]
    return DASH if c is None else f"{c['trial']} ({c['registered_model']} v{c['version']})"


def metric_title(report: dict) -> str:
    return "test LL (nats)" if report["unit"] == "nats" else "bits/dim"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: dict) -> str:
    """report.md: the table against the paper, what its columns mean, the figures, the source."""
    unit, paper = report["unit"], report["paper"]
    lines = [f"# Study `{report['study']}` against the paper's Table 1", "",
             f"{report['dataset_label']} (`{report['dataset']}`): {report['unit_meaning']}. "
             f"{report['champions']} of {len(report['groups'])} groups have a champion; {report['trials']} trials. "
             f"Tracking: `{report['tracking_uri']}`, parent run `{report['parent_run_id']}`.", "",
             f"| model | prior | trials | champion | {metric_title(report)} | paper | ours - paper | "
             "protocol | epochs | stopped |",
             "|---|---|---:|---|---:|---:|---:|---|---|---|"]
    for row in report["groups"]:
        diff = signed(row["difference"], unit)
        if verdict(row):
            diff += f" ({verdict(row)})"
        lines.append("| " + " | ".join(_cell(c) for c in (
            row["model"], row["prior"], str(row["trials"]), champion_text(row), number(row["ours"], unit),
            number(row["paper"], unit), diff, protocol_text(row), epochs_text(row), stop_text(row))) + " |")
    direction = "higher" if report["higher_is_better"] else "lower"
    lines += ["", f"*ours - paper* is in {unit}; {direction} is better, so the word beside it says which way it "
              "goes. '-': the paper has no such cell, or the group has no champion yet. A champion measured with "
              "a `reduced` protocol (fewer importance samples, part of the test set or of the training set) is "
              "not comparable with the paper's numbers (`full`: S = 5000, whole sets)."]
    alternatives = [r for r in report["groups"] if r["paper_alternative"]]
    for row in alternatives:
        alt = row["paper_alternative"]
        lines.append(f"\n{row['model']} + {row['prior']}: the paper also gives {number(alt['value'], unit)}, in "
                     f"{alt['where']}; the table above uses its Table 1 number (see the notes below).")
    lines += ["", "## Figures", "",
              "Validation loss (beta = 1) per epoch of every trial; one panel per model, one colour per prior, "
              "champions bold:", "", f"![validation loss per epoch]({report['figures']['validation_loss']})", "",
              f"Each champion's {metric_title(report)} beside the paper's:", "",
              f"![champions against the paper]({report['figures']['vs_paper']})", "",
              "## Source", "",
              f"{paper['authors']}, \"{paper['title']}\", {paper['venue']}, "
              f"[arXiv:{paper['arxiv']}]({paper['url']}): {paper['tables']}.", ""]
    lines += [f"- {note}" for note in paper["notes"]]
    return "\n".join(lines) + "\n"


def to_json(report: dict) -> str:
    """report.json: the summary as it is (numbers as numbers, a missing one as null)."""
    return json.dumps(report, indent=2) + "\n"
