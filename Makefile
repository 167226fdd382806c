# dlagent: two commands get a newcomer from a fresh clone to a finished pipeline.
#   make run    set up .venv and the embedded stack, run dl_agent_pipeline, print a summary
#   make test   same set-up, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlagent-installed
CONF ?= {}

.PHONY: run test install setup lint mlflow-ui bench clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "[dlagent] $(PYTHON) not found: install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || { echo "[dlagent] creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[dlagent] installing pinned dependencies into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

setup: install
	$(PY) -m dlagent.cli setup

run: install
	$(PY) -m dlagent.cli run --conf '$(CONF)'

test: install
	$(PY) -m dlagent.cli setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check plugins dags tests bench

mlflow-ui: install
	@eval "$$($(PY) -m dlagent.cli env)"; \
	uri=$${MLFLOW_TRACKING_URI:-sqlite:///$$DLAGENT_HOME/mlflow/mlflow.db}; \
	echo "[dlagent] MLflow UI on http://127.0.0.1:5000 for $$uri"; \
	$(VENV)/bin/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port 5000

clean:
	rm -rf .dlagent
