"""Every DAG imports cleanly, fast, without heavy libraries, with tags, retries and docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_DIR

DAG_FILES = sorted((PROJECT_DIR / "dags").glob("*.py"))
HEAVY = ["tensorflow", "keras", "mlflow", "optuna", "sklearn", "numpy", "pandas", "matplotlib"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_DIR / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"dl_agent_pipeline"} <= set(dagbag.dag_ids)


def test_every_dag_has_tags_owner_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            assert task.owner != "airflow", f"{dag_id}.{task.task_id} has the default owner"


def test_no_cycles(dagbag):
    for dag in dagbag.dags.values():
        assert dag.topological_sort()  # raises on a cycle


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_without_heavy_imports(dag_file):
    """In a fresh interpreter, as the DAG processor parses it: nothing heavy is imported. (How long it
    takes is measured by bench/parse_time.py, against an Airflow-only DAG: a time limit here flakes on a
    loaded machine.)"""
    probe = (
        "import json, runpy, sys\n"
        "import airflow.sdk\n"
        f"runpy.run_path({str(dag_file)!r})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy}))\n"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT_DIR)
    report = json.loads(output.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"{dag_file.name} imports {report['heavy']} at parse time"


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"model": "vgg"}, "model"),
        ({"model": "include/models/example.py"}, "model"),
        ({"model_args": [64]}, "model_args"),
        ({"augment": "yes"}, "augment"),
        ({"batch_size": "big"}, "batch_size"),
        ({"dropout": 1.5}, "dropout"),
        ({"max_samples": 5}, "max_samples"),
    ],
)
def test_trigger_form_refuses_bad_values_naming_the_field(dagbag, conf, field):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["dl_agent_pipeline"].params)
    with pytest.raises(ParamValidationError, match=f"param {field}"):
        params.update(conf)  # Airflow validates each value as it is set, as for a trigger
        params.validate()


def test_every_param_is_described(dagbag):
    for name, param in dagbag.dags["dl_agent_pipeline"].params.items():
        assert param.description, f"Param {name} has no description"


def test_dag_files_name_no_trigger_classes():
    for dag_file in DAG_FILES:
        assert "BaseTrigger" not in Path(dag_file).read_text(), "triggers must live in plugins/dlagent/triggers"
