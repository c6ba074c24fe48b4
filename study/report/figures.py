"""The report's figures, PNG files drawn with matplotlib's Agg backend (no display needed):
the validation loss per epoch of every trial, and the champions beside the paper's numbers."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from study.report.collect import StudyRecord  # noqa: E402
from study.report.render import metric_title  # noqa: E402


def _colours(priors: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10")
    return {prior: palette(i % 10) for i, prior in enumerate(priors)}


def _priors(record: StudyRecord) -> list[str]:
    return list(dict.fromkeys(p for _, p in record.groups()))


def validation_loss(record: StudyRecord, path: Path) -> Path:
    """One panel per model: each trial's validation loss (beta = 1) per epoch, one colour per
    prior, the group champions' trials bold."""
    models = list(dict.fromkeys(m for m, _ in record.groups())) or ["?"]
    colours = _colours(_priors(record))
    champions = {c.run_id for c in record.champions}
    fig, axes = plt.subplots(1, len(models), figsize=(5.0 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        for trial in (t for t in record.trials if t.model == model and t.val_loss):
            bold = trial.run_id in champions
            epochs, losses = zip(*trial.val_loss)
            ax.plot(epochs, losses, color=colours.get(trial.prior, "gray"), linewidth=2.6 if bold else 1.0,
                    alpha=1.0 if bold else 0.55, marker="o", markersize=4 if bold else 2.5, zorder=3 if bold else 2)
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats, beta = 1)")
    handles = [Line2D([], [], color=c, label=p) for p, c in colours.items()]
    handles.append(Line2D([], [], color="black", linewidth=2.6, label="champion"))
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(f"study {record.study}: validation loss per epoch")
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def versus_paper(report: dict, path: Path) -> Path:
    """Each group's champion (filled dot) beside the paper's number (open diamond), in the paper's
    unit; a group without a champion or without a paper cell shows only what it has."""
    groups = report["groups"]
    colours = _colours(list(dict.fromkeys(g["prior"] for g in groups)))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(groups) + 1.5), 4.0))
    for x, g in enumerate(groups):
        colour = colours[g["prior"]]
        if g["ours"] is not None and g["paper"] is not None:
            ax.plot([x, x], [g["ours"], g["paper"]], color=colour, linewidth=1, alpha=0.5)
        if g["ours"] is not None:
            ax.plot(x, g["ours"], "o", color=colour, markersize=9)
        if g["paper"] is not None:
            ax.plot(x, g["paper"], "D", markerfacecolor="none", markeredgecolor=colour, markersize=9,
                    markeredgewidth=1.6)
    ax.set_xticks(range(len(groups)), [f"{g['model']}\n{g['prior']}" for g in groups], fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(f"{metric_title(report)}, {'higher' if report['higher_is_better'] else 'lower'} is better")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color="black", label="this study's champion"),
                       Line2D([], [], marker="D", linestyle="", markerfacecolor="none", color="black",
                              label="paper (Table 1)")], fontsize=8, loc="best")
    reduced = any(g["protocol"] and g["protocol"]["protocol"] != "full" for g in groups)
    ax.set_title(f"study {report['study']} ({report['dataset_label']}) against the paper"
                 + ("\n(reduced protocol: not comparable with the paper's numbers)" if reduced
                    else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
