"""Tests of study.ledger: the Optuna storage as the record of a study's trials (a real SQLite
RDB storage in a temporary folder)."""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from study.ledger import Ledger, existing_groups
from study.spec import parse_space


def _spec(budget: int = 3, name: str = "led", **search):
    return parse_space({
        "name": name, "dataset": "static_mnist", "models": ["vae", "hvae"],
        "space": {"lr": {"loguniform": [1e-4, 1e-3]}, "priors": {"standard": {}, "vampprior": {"K": [20]}}},
        "fixed": {"epochs": 20},
        "search": {"trials_per_group": budget, "seed": 0, **search},
        "early_stopping": {"grace_period": 2, "reduction_factor": 2}})


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/optuna.db"


def _issue_all(ledger):
    tickets = []
    while (ticket := ledger.next()) is not None:
        tickets.append(ticket)
    return tickets


def test_every_group_gets_exactly_its_budget_round_robin(url):
    ledger = Ledger(url, _spec(budget=3))
    tickets = _issue_all(ledger)
    labels = [t.group.label for t in tickets]
    assert labels[:4] == ["vae+standard", "hvae+standard", "vae+vampprior", "hvae+vampprior"]  # all at once
    assert {label: labels.count(label) for label in labels} == {g.label: 3 for g in ledger.groups}
    assert all(("K" in t.params) == (t.group.prior == "vampprior") for t in tickets)
    assert len({t.seed for t in tickets}) == len(tickets)
    assert [t.key for t in tickets[:2]] == ["vae-standard-000", "hvae-standard-000"]


def test_one_optuna_study_per_group_holds_values_and_states(url):
    ledger = Ledger(url, _spec(budget=1))
    a, b, c, d = _issue_all(ledger)
    ledger.ended(a.key, {"stop_reason": "max_epochs", "best_val_loss": 90.5, "epoch": 20, "best_epoch": 18})
    ledger.ended(b.key, {"stop_reason": "diverged", "epoch": 3})
    ledger.failed(c.key, "Traceback ...\nOSError: storage went away")
    storage = optuna.storages.RDBStorage(url)
    names = sorted(s.study_name for s in storage.get_all_studies())
    assert names == ["led/hvae+standard", "led/hvae+vampprior", "led/vae+standard", "led/vae+vampprior"]
    trial = optuna.load_study(study_name="led/vae+standard", storage=storage).trials[0]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 90.5)
    assert trial.user_attrs == {"trial": "vae-standard-000", "seed": a.seed, "stop_reason": "max_epochs",
                                "epochs": 20, "best_epoch": 18}
    diverged = optuna.load_study(study_name="led/hvae+standard", storage=storage).trials[0]
    assert (diverged.state, diverged.value, diverged.user_attrs["stop_reason"]) == (TrialState.COMPLETE, math.inf,
                                                                                     "diverged")
    failed = optuna.load_study(study_name="led/vae+vampprior", storage=storage).trials[0]
    assert failed.state == TrialState.RUNNING and "storage went away" in failed.user_attrs["failure"]
    assert ledger.failures == {c.key: "Traceback ...\nOSError: storage went away"}
    assert existing_groups(url, "led") == names and existing_groups(url, "other") == []


def test_early_stopping_compares_a_trial_only_with_its_own_group(url):
    """vae+standard's losses are ten times hvae+vampprior's: a study-wide ASHA would stop them all
    at the first rung; per group, the best of each group goes on."""
    ledger = Ledger(url, _spec(budget=2))
    tickets = _issue_all(ledger)
    loss = {"vae+standard": 1000.0, "hvae+standard": 500.0, "vae+vampprior": 300.0, "hvae+vampprior": 100.0}
    decisions = {}
    for t in tickets:  # the first trial of each group reaches epoch 2 first, then the second, a bit worse
        decisions[t.key] = ledger.report(t.key, 2, loss[t.group.label] + t.number)
    assert not any(decisions[t.key] for t in tickets if t.number == 0)  # best of its group: goes on
    assert all(decisions[t.key] for t in tickets if t.number == 1)  # worse than its group's: stopped
    pruned = [t for g in ledger.groups for t in ledger.trials(g) if t.state == TrialState.PRUNED]
    assert len(pruned) == 4 and all(t.user_attrs["stop_reason"] == "asha" for t in pruned)
    assert not ledger.report(tickets[0].key, 3, 1e9)  # no decision on a trial already stopped


def test_no_decision_before_the_grace_period_or_on_a_last_result(url):
    ledger = Ledger(url, _spec(budget=2))
    first, second = [t for t in _issue_all(ledger) if t.group.label == "vae+standard"]
    assert not ledger.report(first.key, 1, 10.0) and not ledger.report(second.key, 1, 99.0)  # epoch 1 < grace 2
    ledger.report(first.key, 2, 10.0)
    assert not ledger.report(second.key, 2, 99.0, may_stop=False)  # it ended by itself at epoch 2


def test_a_reopened_ledger_hands_back_unended_trials_with_their_checkpoints(url):
    ledger = Ledger(url, _spec(budget=1))
    a, b, c, d = _issue_all(ledger)
    ledger.report(a.key, 1, 50.0)
    ledger.checkpointed(a.key, "s3://bucket/run-1/vae-standard-000/checkpoint_000000")
    ledger.ended(b.key, {"stop_reason": "early_stopping", "best_val_loss": 80.0})
    ledger.failed(c.key, "node lost")
    del ledger  # the driver dies; d was issued and never heard of again

    again = Ledger(url, _spec(budget=1))
    resumed = _issue_all(again)
    assert [t.key for t in resumed] == [a.key, c.key, d.key]  # not b: it ended
    assert resumed[0].checkpoint == "s3://bucket/run-1/vae-standard-000/checkpoint_000000"
    assert (resumed[0].params, resumed[0].seed, resumed[0].reported) == (a.params, a.seed, {1})
    again.ended(a.key, {"stop_reason": "max_epochs", "best_val_loss": 45.0})
    assert again.complete(a.group) and not again.complete(c.group)


def test_a_larger_budget_adds_only_the_missing_trials(url):
    ledger = Ledger(url, _spec(budget=1))
    for t in _issue_all(ledger):
        ledger.ended(t.key, {"stop_reason": "max_epochs", "best_val_loss": 1.0})
    more = _issue_all(Ledger(url, _spec(budget=3)))
    assert sorted(t.key for t in more if t.group.label == "vae+standard") == ["vae-standard-001", "vae-standard-002"]
    assert len(more) == 8


def test_looking_for_groups_creates_no_storage(tmp_path):
    assert existing_groups(f"sqlite:///{tmp_path}/none.db", "led") == []
    assert not (tmp_path / "none.db").exists()


def test_optuna_dashboard_shows_every_group(url, tmp_path):
    """The command the README gives: optuna-dashboard on the study's storage, over HTTP."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    ledger = Ledger(url, _spec(budget=1, name="dash"))
    for t in _issue_all(ledger):
        ledger.report(t.key, 1, 10.0)
        ledger.ended(t.key, {"stop_reason": "max_epochs", "best_val_loss": 10.0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read()[-2000:]
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(s["study_name"] for s in studies) == [
        "dash/hvae+standard", "dash/hvae+vampprior", "dash/vae+standard", "dash/vae+vampprior"]
    assert all(s["user_attrs"] and s["directions"] == ["minimize"] for s in studies)


def test_a_resumed_study_draws_what_an_uninterrupted_one_would(url, tmp_path):
    spec = _spec(budget=4, algorithm="random")
    whole = [(t.key, t.params) for t in _issue_all(Ledger(f"sqlite:///{tmp_path}/whole.db", spec))]
    cut = Ledger(url, spec)
    first = [cut.next() for _ in range(5)]
    for t in first:
        cut.ended(t.key, {"stop_reason": "max_epochs", "best_val_loss": 1.0})
    rest = _issue_all(Ledger(url, spec))
    assert sorted((t.key, t.params) for t in first + rest) == sorted(whole)


def test_a_trial_the_driver_died_creating_is_dropped(url):
    ledger = Ledger(url, _spec(budget=2))
    study = ledger.studies[ledger.groups[0]]
    study.ask()  # a RUNNING trial without parameters: the driver died inside ask()
    again = Ledger(url, _spec(budget=2))
    assert again.resumable == [] and again.issued(again.groups[0]) == 0
    assert [t.key for t in _issue_all(again) if t.group == again.groups[0]] == ["vae-standard-001",
                                                                               "vae-standard-002"]


def test_a_tpe_group_past_its_start_up_waits_for_it_while_others_have_trials(url):
    spec = _spec(budget=6, algorithm="tpe")  # start-up: 2 trials per group
    ledger = Ledger(url, spec)
    issued = [ledger.next() for _ in range(8)]  # two of each of the four groups: every start-up
    assert sorted(t.number for t in issued) == [0, 0, 0, 0, 1, 1, 1, 1]
    for t in issued[:2]:  # vae+standard's start-up trials end (issued first: round-robin)
        assert t.group.label in ("vae+standard", "hvae+standard")
    for t in [t for t in issued if t.group.label == "vae+standard"]:
        ledger.ended(t.key, {"stop_reason": "max_epochs", "best_val_loss": 1.0})
    assert [ledger.next().group.label for _ in range(4)] == ["vae+standard"] * 4  # the one group that is ready
    nxt = ledger.next()  # vae+standard has its budget; the others still wait, but no slot stays idle
    assert nxt is not None and nxt.number == 2


def test_a_late_result_of_a_stopped_trial_is_stopped_again(url):
    ledger = Ledger(url, _spec(budget=2))
    a, b = [t for t in _issue_all(ledger) if t.group.label == "vae+standard"]
    ledger.report(a.key, 2, 10.0)
    assert ledger.report(b.key, 2, 20.0)  # pruned
    assert ledger.report(b.key, 3, 5.0)  # Tune restarted it after a fault: stop it again
    assert not ledger.report(b.key, 3, 5.0, may_stop=False)
