"""A task-instance context for calling an operator's execute() directly.

Airflow builds this for a real task; here only the parts our operators read are given, and
XComs are kept in a dict so a test can read what the task pushed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TaskInstanceStub:
    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    xcoms: dict = field(default_factory=dict)
    task_states: dict = field(default_factory=dict)  # this run's other tasks: task_id -> state

    def xcom_push(self, key, value):
        self.xcoms[key] = value

    def xcom_pull(self, task_ids=None, key="return_value", default=None, **_):
        return self.xcoms.get((task_ids, key), default)

    def get_task_states(self, dag_id, run_ids=None, **_):
        return {run_id: dict(self.task_states) for run_id in run_ids or [self.run_id]}


@dataclass
class DagRunStub:
    dag_id: str
    run_id: str


def make_context(task_id: str, *, dag_id: str = "test_dag", run_id: str = "manual__1", map_index: int = -1) -> dict:
    ti = TaskInstanceStub(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
    return {"ti": ti, "dag_run": DagRunStub(dag_id=dag_id, run_id=run_id), "params": {}}
