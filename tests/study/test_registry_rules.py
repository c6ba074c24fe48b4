"""The rules of the registry that users rely on: the evaluation protocol, which version holds the
`champion` alias, and how a registered model is named on the command line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from study.pull import parse_reference
from study.protocol import Protocol, takes_alias
from trainables.errors import InputError

FULL = Protocol.of("static_mnist", 5000, 10000, 50000)
QUICK = Protocol.of("static_mnist", 500, 500, 2000)
OTHER_QUICK = Protocol.of("static_mnist", 500, 1000, 2000)


@pytest.mark.parametrize("samples, test_size, train_size, full", [
    (5000, 10000, 50000, True),
    (10000, 10000, 50000, True),   # more samples than the paper's: still comparable
    (500, 10000, 50000, False),
    (5000, 500, 50000, False),
    (5000, 10000, 2000, False),
])
def test_a_protocol_is_full_only_with_the_papers_samples_and_whole_sets(samples, test_size, train_size, full):
    assert Protocol.of("static_mnist", samples, test_size, train_size).full is full


def test_protocol_tags_round_trip():
    assert QUICK.tags() == {"protocol": "reduced", "protocol.samples": "500", "protocol.test_size": "500",
                            "protocol.train_size": "2000"}
    assert Protocol.from_tags({**FULL.tags(), "test_ll": "-85.0"}) == FULL
    assert Protocol.from_tags({"test_ll": "-85.0"}) is None  # a version registered before protocols


@pytest.mark.parametrize("new, new_ll, holder, holder_ll, held, takes", [
    (QUICK, -200.0, None, None, False, True),        # nobody holds the alias yet
    (QUICK, -190.0, QUICK, -200.0, True, True),      # same protocol, better
    (QUICK, -210.0, QUICK, -200.0, True, False),     # same protocol, worse
    (QUICK, -200.0, QUICK, -200.0, True, False),     # same protocol, no better
    (QUICK, -80.0, FULL, -90.0, True, False),        # a quickstart never takes it from the paper's protocol
    (FULL, -95.0, QUICK, -80.0, True, True),         # the paper's protocol supersedes a reduced one
    (FULL, -84.0, FULL, -85.0, True, True),
    (FULL, -86.0, FULL, -85.0, True, False),
    (OTHER_QUICK, -100.0, QUICK, -200.0, True, False),  # two reduced protocols do not compare
    (QUICK, -100.0, None, -200.0, True, False),      # a holder of unknown protocol: only a full one takes it
    (FULL, -100.0, None, -80.0, True, True),
])
def test_the_champion_alias_moves_only_within_a_protocol_or_to_the_full_one(new, new_ll, holder, holder_ll, held,
                                                                             takes):
    assert takes_alias(new, new_ll, holder, holder_ll, held=held) is takes


@pytest.mark.parametrize("reference, parsed", [
    ("static_mnist-hvae-vampprior", ("static_mnist-hvae-vampprior", "champion", None)),
    ("static_mnist-hvae-vampprior@champion", ("static_mnist-hvae-vampprior", "champion", None)),
    ("static_mnist-hvae-vampprior@staging", ("static_mnist-hvae-vampprior", "staging", None)),
    ("static_mnist-hvae-vampprior/3", ("static_mnist-hvae-vampprior", None, "3")),
    ("models:/omniglot-vae-standard@champion", ("omniglot-vae-standard", "champion", None)),
    ("models:/omniglot-vae-standard/12", ("omniglot-vae-standard", None, "12")),
    ("models:/omniglot-vae-standard", ("omniglot-vae-standard", "champion", None)),
    ("my.model_v2@best_run-1", ("my.model_v2", "best_run-1", None)),  # '.', '_', '-' in names; '_', '-' in aliases
])
def test_registry_references(reference, parsed):
    assert parse_reference(reference) == parsed


@pytest.mark.parametrize("reference", [
    "", "a b", "name@", "name/", "name/x", "name@a@b", "models:/", "x/1/2",
    "models:/name@", "models:/name/", "name@alias/3", "name/3@alias",  # an alias and a version at once
    "@champion", "/3", " name", "name/-1", "name@al.ias",
    "models:/models:/name", "MODELS:/name", "models:name@champion",  # only the exact models:/ prefix
    "runs:/0123abcd/model",  # a run's artifact URI is not a registered model
    "name\n", "name@champion\n",  # a trailing newline (a pasted line) is not part of a name
])
def test_bad_registry_references_name_the_forms_allowed(reference):
    with pytest.raises(InputError, match="NAME, NAME@ALIAS or NAME/VERSION") as error:
        parse_reference(reference)
    assert repr(reference) in str(error.value)


def test_pull_and_score_of_a_registered_model_need_neither_ray_nor_optuna():
    code = ("import sys, study.cli, study.pull, study.train_command, trainables.artifacts; "
            "print(sorted({'ray', 'optuna'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
