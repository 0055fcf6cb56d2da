# ltkit: `make demo`, `make test`, `make lab`. Each creates .venv (with the
# python3 on PATH) and installs the project into it the first time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ltkit-installed

.PHONY: install demo test lab clean

install: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c .ci/constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ltkit.demo

# pytest over tests/ and nbval (lax: only cells marked NBVAL_CHECK_OUTPUT are
# compared) over every notebook, in one run.
test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs
