"""The report as a Rich table on the terminal (the same cells as report.md)."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from study.report import render


def table(report: dict) -> Table:
    unit = report["unit"]
    t = Table(title=f"study {escape(report['study'])}: {escape(report['dataset_label'])} against the paper's "
                    f"Table 1 ({unit})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    rows = [(escape(row["model"]), escape(row["prior"]), str(row["trials"]), escape(_champion(row)),
             render.number(row["ours"], unit), render.number(row["paper"], unit),
             render.signed(row["difference"], unit), escape(_protocol(row)), _epochs(row),
             escape(render.stop_text(row)), render.verdict(row)) for row in report["groups"]]
    for i, (column, kept) in enumerate((("model", True), ("prior", True), ("trials", True), ("champion", False),
                                        ("ours", True), ("paper", True), ("ours-paper", True),
                                        ("protocol", False), ("epochs", False), ("stopped", False))):
        # names and numbers are never cut (their columns keep their longest cell); the rest folds
        t.add_column(column, justify="right" if i in (2, 4, 5, 6) else "left", no_wrap=kept, overflow="fold",
                     min_width=max((len(r[i]) for r in rows), default=1) if kept else None)
    for *cells, verdict in rows:
        colour = {"better": "green", "worse": "red"}.get(verdict)
        if colour:
            cells[6] = f"[{colour}]{cells[6]}[/{colour}]"
        t.add_row(*cells)
    return t


def _champion(row: dict) -> str:
    c = row["champion"]
    return render.DASH if c is None else f"{c['trial']} v{c['version']}"


def _protocol(row: dict) -> str:
    p = row["protocol"]
    return render.DASH if p is None else f"{p['protocol']} S={p['samples']} test={p['test_size']}"


def _epochs(row: dict) -> str:
    return render.DASH if row["epochs"] is None else f"{row['epochs']} ({row['best_epoch']})"


def print_report(console: Console, report: dict, out: str) -> None:
    """The table (numbers in the title's unit; epochs: trained, and the best one), then where the
    files went. Written to a file or a pipe (no terminal to fit), the table keeps its natural width
    instead of folding to 80 columns."""
    t = table(report)
    if not console.is_terminal:
        natural = console.measure(t, options=console.options.update_width(10_000)).maximum
        console = Console(file=console.file, highlight=False, width=max(console.width, natural))
    console.print(t)
    console.print(f"{'higher' if report['higher_is_better'] else 'lower'} is better; '-': no paper cell or no "
                  f"champion. Report: {escape(out)}/report.md (and report.json, figures); logged to the study's "
                  f"parent run {escape(report['parent_run_id'])} under report/")
