"""The study's ledger seen from Ray Tune: one searcher and one scheduler for every group at once.

One Tune experiment runs every trial of a study, so all models share the cluster; these three
adapters make it behave as one search and one early stopping per (model, prior) group:

- `GroupedSearch` (a Tune Searcher) asks the ledger for the next trial: trials an earlier run left
  unended first, then new trials round-robin over the groups until every budget is issued
  (then `Searcher.FINISHED`). It hands Tune a new trial only while fewer trials wait to start
  than the cluster has free slots, so a trial's parameters are chosen when it can start, with
  every result that has come in.
- `GroupedEarlyStopping` (a Tune scheduler) hands each epoch's validation loss to the trial's
  group in the ledger, whose ASHA decides; a stop is PRUNED for that group's sampler.
- `LedgerCallback` records each trial's newest checkpoint (for `study resume`) and failures.

They hold no state of their own worth saving: the ledger (an Optuna RDB storage) is the state,
so Tune's pickles of them (tuner.pkl, searcher checkpoints) are never used to resume.

Tune only logs an error of a callback's `on_checkpoint` and turns one of a searcher's
`on_trial_complete` into the trial's failure: a ledger whose storage stayed away
(`LedgerUnreachable`) is recorded as `ledger.gone` there instead, and the runner stops the study.
"""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from contextlib import contextmanager

from study.ledger import Ledger, LedgerUnreachable
from study.search import chosen_settings
from study.tracking import error_text
from trainables.tune_trainable import checkpoint_uri


@contextmanager
def _unless_gone(ledger: Ledger):
    """Record a storage that stayed away on the ledger rather than let Tune mistake it (above)."""
    try:
        yield
    except LedgerUnreachable as e:
        ledger.gone = ledger.gone or e


class _NotPickled:
    """Tune pickles its searcher, scheduler and callbacks with its own state; ours live in the ledger."""

    def __getstate__(self) -> dict:
        return {}


class GroupedSearch(_NotPickled, Searcher):
    def __init__(self, ledger: Ledger, slots: int):
        # No metric for Tune to check: a trial that diverges in its first epoch reports none, and
        # the ledger reads the results itself.
        super().__init__(metric=None, mode=None)
        self.ledger = ledger
        self.slots = slots  # how many trials the cluster runs at once
        self.keys: dict[str, str] = {}  # Tune's trial id -> the trial's key in the ledger

    def suggest(self, trial_id: str):
        waiting = len(self.ledger.waiting)
        if waiting and waiting >= self.slots - (len(self.ledger.running) - waiting):
            return None  # every free slot has a trial waiting for it: ask again later
        ticket = self.ledger.next()
        if ticket is None:
            return Searcher.FINISHED
        self.keys[trial_id] = ticket.key
        config = {"trial": ticket.key, "number": ticket.number,
                  **chosen_settings(ticket.group, ticket.params, ticket.seed)}
        if ticket.checkpoint:
            config["checkpoint"] = ticket.checkpoint
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # A failure is recorded by LedgerCallback (it has the error's text); a scheduler stop was
        # recorded when it was decided. What is left: a trial that stopped by itself.
        if not error and result and result.get("stop_reason"):
            with _unless_gone(self.ledger):
                self.ledger.ended(self.keys[trial_id], result)

    def save_to_dir(self, *args, **kwargs) -> None:
        """Nothing to save: the ledger is the searcher's state."""


class GroupedEarlyStopping(_NotPickled, FIFOScheduler):
    def __init__(self, ledger: Ledger):
        super().__init__()
        self.ledger = ledger

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "val_loss" not in result or "epoch" not in result:
            return TrialScheduler.CONTINUE
        finished = bool(result.get("stop_reason"))
        stop = self.ledger.report(trial.config["trial"], int(result["epoch"]), float(result["val_loss"]),
                                  may_stop=not finished)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE


class LedgerCallback(_NotPickled, tune.Callback):
    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def on_trial_start(self, iteration, trials, trial, **info):
        self.ledger.started(trial.config["trial"])

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        with _unless_gone(self.ledger):
            self.ledger.checkpointed(trial.config["trial"], checkpoint_uri(checkpoint))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ledger.failed(trial.config["trial"], error_text(trial))
