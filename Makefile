# Two entry points a fresh clone needs (see README): `make first-run` and `make test`.
# Each installs what it needs into .venv first (torch pinned before the project: a bare torch
# requirement would pull a multi-GB CUDA build on a CPU machine).

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
# Use the dataset mirror beside the clone when there is one (machines without internet).
export STUDY_DATA_MIRROR ?= $(abspath $(wildcard ../shared/datasets))

.PHONY: install system-deps first-run test test-fast clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

# A first real study: search_spaces/quickstart.yaml on the embedded default (local Ray, MLflow
# on SQLite, storage on disk, all under ./studies): about 2 minutes on 2 CPU cores.
first-run: install
	$(BIN)/study run search_spaces/quickstart.yaml

# The integration tests start real servers and a real browser: PostgreSQL 15's server
# binaries, Chromium and its driver (Debian packages; installed here when missing and root).
SYSTEM_PACKAGES := chromium chromium-driver postgresql-15
system-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	    && [ -x /usr/lib/postgresql/15/bin/initdb ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "the tests need: sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi

test: install system-deps
	$(BIN)/python -m pytest tests -q --durations=15

# The unit layer (the mathematics, the rules, the deployment files): under a minute, no servers.
test-fast: install
	$(BIN)/python -m pytest tests/trainables tests/study tests/infra -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
