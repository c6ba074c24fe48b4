"""A live Rich table of a study's trials while it runs (on stderr)."""
from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table
from ray import tune

#: How a trial ended, as the table says it.
ENDINGS = {"early_stopping": "done (patience)", "max_epochs": "done (max epochs)", "diverged": "diverged",
           "": "stopped early (ASHA)"}


class LiveTable(tune.Callback):
    """Trial, state, epoch, validation loss and best validation loss, refreshed as results come."""

    def __init__(self, console: Console, title: str):
        self.console = console
        self.title = title
        self.rows: dict[str, dict] = {}
        self.live: Live | None = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with its own state
        return {"title": self.title}

    def _render(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for column in ("trial", "state", "epoch", "val loss", "best"):
            table.add_column(column, justify="left" if column in ("trial", "state") else "right")
        for row in self.rows.values():
            table.add_row(row["name"], row["state"], str(row.get("epoch", "")),
                          _number(row.get("val_loss")), _number(row.get("best_val_loss")))
        return table

    def _update(self, trial, **values) -> None:
        row = self.rows.setdefault(trial.config["trial"], {"name": str(trial)})
        row.update(values)
        if self.live is None:
            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        self.live.update(self._render())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, state="running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update(trial, state="running", epoch=result.get("epoch"), val_loss=result.get("val_loss"),
                     best_val_loss=result.get("best_val_loss"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._update(trial, state="retrying from its checkpoint")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial, state=ENDINGS.get((trial.last_result or {}).get("stop_reason") or "", "done"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, state="failed")

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.live.stop()
            self.live = None


def _number(value) -> str:
    return "" if value is None else f"{value:.2f}"
