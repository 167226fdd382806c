# dlagent: two commands get a newcomer from a fresh clone to a finished pipeline.
#   make run    set up .venv and the embedded stack, run dl_agent_pipeline, print a summary
#   make test   same set-up, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlagent-installed
CONF ?= {}

.PHONY: run test install setup ui lint mlflow-ui serve rollback clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "[dlagent] $(PYTHON) not found: install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || { echo "[dlagent] creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[dlagent] installing pinned dependencies into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@# the installed entry point is the plugin; a second copy in plugins/ would register it twice
	rm -rf plugins/dlagent.egg-info
	@touch $(STAMP)

install: $(STAMP)

setup: install
	$(PY) -m dlagent.cli setup

run: install
	$(PY) -m dlagent.cli run --conf '$(CONF)'

test: install
	$(PY) -m dlagent.cli setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The real services: Airflow api-server (UI), scheduler, dag-processor, triggerer and an
# MLflow server; prints the URLs and the login. EXECUTOR=CeleryExecutor adds 2 Celery workers.
EXECUTOR ?= LocalExecutor
ui: setup
	$(PY) -m dlagent.cli ui --executor $(EXECUTOR)

lint: install
	$(VENV)/bin/ruff check plugins dags tests bench

mlflow-ui: install
	@eval "$$($(PY) -m dlagent.cli env)"; \
	uri=$${MLFLOW_TRACKING_URI:-sqlite:///$$DLAGENT_HOME/mlflow/mlflow.db}; \
	echo "[dlagent] MLflow UI on http://127.0.0.1:5000 for $$uri"; \
	$(VENV)/bin/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port 5000

MODEL_NAME ?= dlagent-classifier
PORT ?= 5001

# Serve the registered champion over HTTP (POST /invocations) with MLflow's scoring server.
serve: install
	@eval "$$($(PY) -m dlagent.cli env)"; \
	export MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$$DLAGENT_HOME/mlflow/mlflow.db}; \
	echo "[dlagent] serving models:/$(MODEL_NAME)@champion from $$MLFLOW_TRACKING_URI on http://127.0.0.1:$(PORT)"; \
	$(VENV)/bin/mlflow models serve -m "models:/$(MODEL_NAME)@champion" --env-manager local --host 127.0.0.1 --port $(PORT)

# Move the alias champion back to previous and re-point the serving bundle.
rollback: install
	$(PY) -m dlagent.cli rollback --model-name $(MODEL_NAME)

clean:
	rm -rf .dlagent
