# Two entry points a fresh clone needs (see README): `make first-run` and `make test`.
# Each installs what it needs into .venv first (torch pinned before the project: a bare torch
# requirement would pull a multi-GB CUDA build on a CPU machine).

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
# Use the dataset mirror beside the clone when there is one (machines without internet).
export STUDY_DATA_MIRROR ?= $(abspath $(wildcard ../shared/datasets))

.PHONY: install first-run test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

# A first real job: hvae + VampPrior on static MNIST for 3 epochs, scored on 1000 test images
# with 5000 importance samples (a few minutes on 2 CPU cores).
first-run: install
	$(BIN)/study train --dataset static_mnist --model hvae --prior vampprior --K 500 \
		--epochs 3 --test-limit 1000 --output outputs/first-run --json

test: install
	$(BIN)/python -m pytest tests -q --durations=10

clean:
	rm -rf $(VENV) outputs .pytest_cache
