"""Run a small DAG with Airflow itself, then ask the api-server for its tasks' extra links.

Used by ``test_plugin.py`` in a subprocess with its own AIRFLOW_HOME, metadata DB and DAGs
folder (``dag.test()`` runs DAGs of the configured bundle). Prints one JSON line:
``{"run_id": ..., "links": {task_id: {"state": ..., "extra_links": {...}}}}``.

    python -m tests.plugin.links_roundtrip <dags folder>
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

DAG_FILE = '''
import pendulum
from airflow.sdk import DAG
from dlagent.operators.base import DlagentOperator


class Step(DlagentOperator):
    def run(self, context):
        with self.step_run(context, "probe") as run_id:
            return {"run_id": run_id}


class FailingStep(DlagentOperator):
    def run(self, context):
        with self.step_run(context, "probe"):
            raise RuntimeError("diverged")


class ParentOnly(DlagentOperator):
    """Works on the DAG run's parent run and has no child run of its own (like validate or tune)."""

    def run(self, context):
        return {"parent_run_id": self.parent_run_id(context)}


with DAG("dlagent_links_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1), tags=["test"]) as dag:
    Step(task_id="step", experiment_name="probe", retries=0)
    FailingStep(task_id="failing_step", experiment_name="probe", retries=0)
    Step.partial(task_id="mapped_step", retries=0).expand(experiment_name=["probe", "probe"])
    ParentOnly(task_id="parent_only", experiment_name="probe", retries=0)
    ParentOnly.partial(task_id="mapped_parent_only", retries=0).expand(experiment_name=["probe", "probe"])
'''


def main(dags_folder: str) -> None:
    path = Path(dags_folder) / "dlagent_links_probe.py"
    path.write_text(DAG_FILE)

    from airflow.utils.db import initdb

    initdb()
    spec = importlib.util.spec_from_file_location("dlagent_links_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag_run = module.dag.test()  # the task runner evaluates each link when a try ends and stores it as XCom

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(create_app(apps="core"))
    headers = {"Authorization": f"Bearer {get_auth_manager().generate_jwt(SimpleAuthManagerUser(username='t', role='viewer'))}"}
    out = {"run_id": dag_run.run_id, "links": {}}
    for task_id, map_index in (("step", -1), ("failing_step", -1), ("mapped_step", 0), ("mapped_step", 1), ("parent_only", -1),
                               ("mapped_parent_only", 0), ("mapped_parent_only", 1)):
        base = f"/api/v2/dags/dlagent_links_probe/dagRuns/{dag_run.run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            state = client.get(f"{base}/{map_index}", headers=headers).json()["state"]
        else:
            state = client.get(base, headers=headers).json()["state"]
        links = client.get(f"{base}/links", params={"map_index": map_index}, headers=headers).json()
        out["links"][f"{task_id}[{map_index}]" if map_index >= 0 else task_id] = {"state": state, **links}
    print("ROUNDTRIP " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
