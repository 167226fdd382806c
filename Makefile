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
	@# the installed entry point is the plugin; a second copy of its metadata on sys.path would register it twice
	rm -rf dlagent.egg-info plugins/dlagent.egg-info dev/dlagent.egg-info dev/dlagent_dev.egg-info
	@touch $(STAMP)

install: $(STAMP)

setup: install
	$(PY) -m dlagent_dev.cli setup

# One line per task as it starts and ends; the full `airflow dags test` log goes to .dlagent/logs/.
run: install
	$(PY) -m dlagent_dev.cli run --conf '$(CONF)'

# The suite fails if it leaves a process running (tests/conftest.py: pytest_sessionfinish).
# It runs on PYTEST_WORKERS pytest-xdist workers: 3 on the CI machine's 2 cores, because a third of
# the suite's time is spent waiting (servers starting, task processes, whole-DAG runs) and a third
# worker fills it (README: "Tests"); the tests that use PostgreSQL or the live services stay
# together on one of them (tests/conftest.py).
PYTEST_WORKERS ?= 3
test: install
	$(PY) -m dlagent_dev.cli setup
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The real services: Airflow api-server (UI), scheduler, dag-processor, triggerer and an
# MLflow server; prints the URLs and the login. EXECUTOR=CeleryExecutor adds 2 Celery workers.
# Ctrl-C (or SIGTERM) stops every service with its whole process group; a `make ui` that was
# killed (SIGKILL) leaves its services, and the next one stops them first and reuses the ports.
EXECUTOR ?= LocalExecutor
ui: setup
	$(PY) -m dlagent_dev.cli ui --executor $(EXECUTOR)

lint: install
	$(VENV)/bin/ruff check plugins dags tests bench dev

# The MLflow UI on the stack's tracking store (MLFLOW_TRACKING_URI, else the embedded one).
# mlflow-ui and serve run MLflow in a process group of their own: Ctrl-C ends all of it.
mlflow-ui: install
	$(PY) -m dlagent_dev.cli mlflow-ui --port 5000

MODEL_NAME ?= dlagent-classifier
PORT ?= 5001

# Serve the registered champion over HTTP (POST /invocations) with MLflow's scoring server.
serve: install
	$(PY) -m dlagent_dev.cli serve --model-name $(MODEL_NAME) --port $(PORT)

# Move the alias champion back to previous and re-point the serving bundle.
rollback: install
	$(PY) -m dlagent_dev.cli rollback --model-name $(MODEL_NAME)

clean:
	rm -rf .dlagent
