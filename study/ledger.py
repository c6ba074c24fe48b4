"""The Optuna storage as the ledger of a study's trials.

One Optuna study per (model, prior) group (`<study>/<model>+<prior>`) in an RDB storage beside
the tracking store: SQLite under STUDY_HOME by default, a deployment's PostgreSQL otherwise. It
holds what the search needs (each trial's parameters, state and value, its validation loss per
epoch, and the early-stopping rungs) and what the engine needs to continue after a crash (each
trial's key and latest checkpoint). So `study resume` rebuilds everything from it: no pickled
searcher or scheduler state, and `optuna-dashboard <storage URL>` shows every group.

Trial states:
- RUNNING: issued and not ended (still training, interrupted, or failed for an infrastructure
  reason after its retries, with user attr `failure`): `study resume` runs it again from its
  latest checkpoint.
- COMPLETE: ended by itself, value = its best validation loss; or diverged, value = +inf.
  User attrs `stop_reason`, `epochs`, `best_epoch`.
- PRUNED: stopped by the group's early stopping (`stop_reason` = `asha`); never a champion.
- FAIL: a trial the driver died creating (before its parameters were stored); not counted.

A trial's key (`<model>-<prior>-<number>`) and seed follow from its group and number alone.

The storage rides out a restart of its database (`PatientStorage`): the ledger is written from
Tune's control loop, where one failed call would end the study.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import search
from study.search import Group
from study.spec import StudySpec
from trainables.patience import patiently
from trainables.train import DIVERGED

ASHA = "asha"
FAILURE_TEXT = 2000  # characters of an error kept in the ledger (Optuna's user attrs are JSON)

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: How long a call of the ledger waits for its database to come back (a restart, a fail-over)
#: before the study gives up.
OUTAGE_SECONDS = 120.0


#: What a database says when it answers and refuses (a wrong password, a missing database).
REFUSED = re.compile(r"authentication failed|does not exist|permission denied|no pg_hba.conf entry", re.I)


class LedgerUnreachable(RuntimeError):
    """The Optuna storage did not answer for OUTAGE_SECONDS; the message names it."""


def _unreachable(error: BaseException) -> bool:
    """Whether a storage error says the database could not be reached or lost the connection
    (worth another try), rather than that it refused what was written."""
    import sqlalchemy.exc

    if isinstance(error, optuna.exceptions.StorageInternalError):  # Optuna wraps SQLAlchemy's errors
        error = error.__cause__
    if REFUSED.search(str(error)):  # it answered: no
        return False
    return isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or bool(
        getattr(error, "connection_invalidated", False))


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage that rides out an outage of its database: a call that cannot reach it
    is made again (after 0.5 s, doubling up to 8 s) for up to OUTAGE_SECONDS, then
    LedgerUnreachable names the storage. Connections that a restart broke are replaced
    (`pool_pre_ping`). A write is made again only when the database could not be reached or the
    connection broke: most of Optuna's writes set a value (twice is harmless); a trial finished or
    created twice needs the connection to break between the database's commit and its answer."""

    def __init__(self, url: str, **kwargs):
        from study.settings import without_userinfo

        self.public_url = without_userinfo(url)
        super().__init__(url, **kwargs)

    def _patiently(self, method, *args, **kwargs):
        try:
            return patiently(lambda: method(self, *args, **kwargs), unanswered=_unreachable, seconds=OUTAGE_SECONDS,
                             first=0.5, longest=8.0)
        except Exception as e:
            if not _unreachable(e):
                raise
            cause = e.__cause__ or e
            raise LedgerUnreachable(f"the Optuna storage {self.public_url} did not answer for {OUTAGE_SECONDS:g} s: "
                                    f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}") from e


def _patient(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._patiently(method, *args, **kwargs)
    return call


#: The RDB storage's own methods that Optuna's cache (`_CachedStorage`, which wraps the storage of
#: every study) calls instead of the public API.
CACHE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids")

# Every call of Optuna's storage API, and those the cache makes, is patient.
for _name in [n for n, m in vars(optuna.storages.BaseStorage).items() if callable(m) and not n.startswith("_")]:
    setattr(PatientStorage, _name, _patient(_name))
for _name in CACHE_CALLS:
    setattr(PatientStorage, _name, _patient(_name))


@dataclass
class Ticket:
    """One trial to run: new, or issued before and not ended (resumed from its checkpoint)."""

    group: Group
    number: int
    params: dict
    seed: int
    checkpoint: str | None = None
    reported: set[int] = field(default_factory=set)  # epochs whose validation loss Optuna holds

    @property
    def key(self) -> str:
        return self.group.trial_key(self.number)


def open_storage(url: str, create: bool = True) -> PatientStorage:
    """The RDB storage at `url` (patient: see PatientStorage); with create=False, no file, table or
    schema is created."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise FileNotFoundError(path)
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True}
    import sqlalchemy.exc

    try:  # it connects at once: a database that is down (or refuses) is said so, naming it
        return PatientStorage(url, engine_kwargs=kwargs, skip_table_creation=not create)
    except sqlalchemy.exc.OperationalError as e:
        from study.settings import without_userinfo

        raise LedgerUnreachable(f"the Optuna storage {without_userinfo(url)} could not be opened: "
                                f"{str(e.orig or e).splitlines()[0][:300]}") from e


def existing_groups(url: str, study: str) -> list[str]:
    """The Optuna studies of `study` in the storage at `url` (creates nothing)."""
    try:
        storage = open_storage(url, create=False)
        names = [s.study_name for s in storage.get_all_studies()]
    except Exception:  # noqa: BLE001 - no file, no tables: no studies
        return []
    return sorted(n for n in names if n.startswith(f"{study}/"))


class Ledger:
    """Every group's Optuna study, the trials being run, and the decisions about them."""

    def __init__(self, url: str, spec: StudySpec):
        self.spec = spec
        self.storage = open_storage(url)
        self.groups = search.groups(spec)
        self.studies: dict[Group, optuna.Study] = {}
        self.resumable: list[tuple[Ticket, int]] = []  # with each trial's id in the storage
        for group in self.groups:
            study = optuna.create_study(storage=self.storage, study_name=group.optuna_name(spec.name),
                                        sampler=search.sampler(spec, group, 0), pruner=search.pruner(spec),
                                        direction="minimize", load_if_exists=True)
            for name, value in {"study": spec.name, "dataset": spec.dataset, "model": group.model,
                                "prior": group.prior, "budget": group.budget}.items():
                study.set_user_attr(name, value)
            self.studies[group] = study
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if set(trial.params) == set(search.distributions(spec, group.prior)):
                    self.resumable.append((self._ticket(group, trial), trial._trial_id))
                else:  # the driver died inside ask(): nothing ran
                    study.tell(trial.number, state=TrialState.FAIL)
        self.running: dict[str, tuple[Ticket, optuna.Trial]] = {}  # issued in this run, not ended
        self.waiting: set[str] = set()  # issued in this run, not started yet
        self.closed: set[str] = set()  # ended in this run (a late result of one is stopped)
        self.failures: dict[str, str] = {}  # trials that failed in this run of the driver -> why
        self.gone: LedgerUnreachable | None = None  # the storage stayed away (see study.engine)

    # ---------------------------------------------------------------- issuing trials

    def _ticket(self, group: Group, trial: FrozenTrial) -> Ticket:
        return Ticket(group, trial.number, dict(trial.params), search.trial_seed(self.spec, group, trial.number),
                      trial.user_attrs.get("checkpoint"), set(trial.intermediate_values))

    def issued(self, group: Group) -> int:
        return len(self.trials(group))

    def all_issued(self) -> bool:
        return not self.resumable and all(self.issued(g) >= g.budget for g in self.groups)

    def next(self) -> Ticket | None:
        """The next trial to run: first those a previous run left unended, then a new trial of a
        group with budget left (see `_next_group`). None when every budget is issued."""
        if self.resumable:
            ticket, trial_id = self.resumable.pop(0)
            trial = optuna.trial.Trial(self.studies[ticket.group], trial_id)
            if trial.user_attrs.get("failure"):
                trial.set_user_attr("failure", "")  # it gets another chance
            return self._issue(ticket, trial)
        group = self._next_group()
        if group is None:
            return None
        study = self.studies[group]
        number = len(study.get_trials(deepcopy=False))
        study.sampler = search.sampler(self.spec, group, number)
        trial = study.ask(search.distributions(self.spec, group.prior))
        ticket = Ticket(group, trial.number, dict(trial.params), search.trial_seed(self.spec, group, trial.number))
        trial.set_user_attr("trial", ticket.key)
        trial.set_user_attr("seed", ticket.seed)  # for the dashboard: it follows from the number
        return self._issue(ticket, trial)

    def _next_group(self) -> Group | None:
        """Round-robin over the groups with budget left (the smallest issued share first), preferring
        groups whose sampler is ready: a TPE group past its start-up waits until its start-up
        trials have ended (then TPE models them), as long as another group has a trial to run. No
        slot is left idle: with only waiting groups left, one of them goes anyway."""
        trials = {g: self.trials(g) for g in self.groups}
        open_groups = [g for g in self.groups if len(trials[g]) < g.budget]
        if not open_groups:
            return None

        def ready(g: Group) -> bool:
            after = search.guided_after(self.spec, g)
            return len(trials[g]) < after or sum(t.state.is_finished() for t in trials[g]) >= after
        candidates = [g for g in open_groups if ready(g)] or open_groups
        return min(candidates, key=lambda g: len(trials[g]) / g.budget)

    def _issue(self, ticket: Ticket, trial: optuna.Trial) -> Ticket:
        self.running[ticket.key] = (ticket, trial)
        self.waiting.add(ticket.key)
        return ticket

    # ---------------------------------------------------------------- what happens to them

    def started(self, key: str) -> None:
        self.waiting.discard(key)

    def report(self, key: str, epoch: int, val_loss: float, may_stop: bool = True) -> bool:
        """Record a trial's validation loss at `epoch`; True if `may_stop` and its group's early
        stopping says stop (the trial is then PRUNED), or if the trial has ended already (a trial
        Tune restarted after its stop was decided)."""
        if key in self.closed:
            return may_stop
        if key not in self.running or not math.isfinite(val_loss):
            return False
        ticket, trial = self.running[key]
        if epoch not in ticket.reported:
            trial.report(val_loss, epoch)
            ticket.reported.add(epoch)
        if not may_stop or not trial.should_prune():
            return False
        trial.set_user_attr("stop_reason", ASHA)
        trial.set_user_attr("epochs", epoch)
        self._close(key)
        self.studies[ticket.group].tell(trial, state=TrialState.PRUNED)
        return True

    def checkpointed(self, key: str, uri: str) -> None:
        if key in self.running:
            self.running[key][1].set_user_attr("checkpoint", uri)

    def ended(self, key: str, result: dict) -> None:
        """A trial stopped by itself (patience, max epochs) or diverged."""
        if key not in self.running:
            return
        ticket, trial = self.running[key]
        reason = result["stop_reason"]
        for name in ("stop_reason", "epoch", "best_epoch"):
            if name in result:
                trial.set_user_attr("epochs" if name == "epoch" else name, result[name])
        self._close(key)
        self.studies[ticket.group].tell(trial, math.inf if reason == DIVERGED else float(result["best_val_loss"]))

    def failed(self, key: str, why: str) -> None:
        """A trial that failed after its retries: it stays RUNNING, for `study resume`."""
        if key in self.running:
            ticket, trial = self.running.pop(key)
            self.waiting.discard(key)
            trial.set_user_attr("failure", why[-FAILURE_TEXT:])
            self.failures[key] = why

    def _close(self, key: str) -> None:
        """Forget a trial before Optuna is told: nothing may write to it once it is finished."""
        self.running.pop(key)
        self.waiting.discard(key)
        self.closed.add(key)

    # ---------------------------------------------------------------- reading

    def trials(self, group: Group) -> list[FrozenTrial]:
        """The group's trials (those the driver died creating left out)."""
        return [t for t in self.studies[group].get_trials(deepcopy=False) if t.state != TrialState.FAIL]

    def complete(self, group: Group) -> bool:
        """Every trial of the group's budget has ended (COMPLETE or PRUNED)."""
        trials = self.trials(group)
        return len(trials) >= group.budget and all(t.state.is_finished() for t in trials)
