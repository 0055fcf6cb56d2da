# ltkit: `make demo`, `make test`, `make lab`. The first of them on a fresh clone
# creates .venv (with the python3 on PATH) and installs the project into it.
# After that they never install again (a `git pull` needs no network): run
# `make install` yourself to pick up new dependencies. Each target runs
# `python -m ltkit <command>`, which also works without make (Windows: see
# docs/INSTALL.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ltkit-installed
LTKIT := $(BIN)/python -m ltkit
RUNS_ARCHIVE ?= ltkit-runs.tar.gz
ROOM ?= ltkit-room
ROOM_ARGS ?=

.PHONY: install demo test lab pack-runs unpack-runs room clean

# Explicit: (re)install, always (new dependencies after a pull, a broken venv).
install:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c .ci/constraints.txt -e ".[dev]"
	@touch $(STAMP)

# Only when .venv does not exist yet: no prerequisites, so a newer pyproject.toml
# does not trigger a reinstall.
$(BIN)/python:
	@$(MAKE) --no-print-directory install

demo: $(BIN)/python
	$(LTKIT) demo

# pytest over tests/ and nbval (lax: only cells marked NBVAL_CHECK_OUTPUT are
# compared) over every notebook, in one run:
#   python -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider
test: $(BIN)/python
	$(LTKIT) test

lab: $(BIN)/python
	$(LTKIT) lab

# Pre-built runs: runs/ and notebooks/runs/ <-> $(RUNS_ARCHIVE)
pack-runs: $(BIN)/python
	$(LTKIT) pack-runs $(RUNS_ARCHIVE)

unpack-runs: $(BIN)/python
	$(LTKIT) unpack-runs $(RUNS_ARCHIVE)

# The offline room kit in $(ROOM)/ (e.g. ROOM_ARGS="--torch-wheel-dir cpu-torch"); see docs/INSTALL.md
room: $(BIN)/python
	$(LTKIT) pack-room $(ROOM) $(ROOM_ARGS)

clean:
	rm -rf $(VENV) runs
