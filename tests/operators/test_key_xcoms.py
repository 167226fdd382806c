"""Which keys of a task's result dict become XComs of their own: in a DAG, those a task of it reads
as ``task.output[key]`` (templated fields, a mapped task's partial and expanded arguments) and the
operator's ``output_keys``; outside a DAG, every key. The return value always holds them all."""

from __future__ import annotations

import datetime

from dlagent.operators.base import DlagentOperator, keys_read_from

from tests.operators.context import make_context


class Returns(DlagentOperator):
    template_fields = ("experiment_name", "value")

    def __init__(self, *, value=None, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def run(self, context):
        return {"model_uri": "models:/m-1", "metrics": {"accuracy": 0.9}, "run_id": "abc", "size": 7}


class Documented(Returns):
    output_keys = ("run_id",)


def _dag():
    from airflow.sdk import DAG

    with DAG("key_xcoms", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        source = Returns(task_id="source")
        documented = Documented(task_id="documented")
        Returns(task_id="plain", value={"uri": source.output["model_uri"], "all": [source.output["metrics"]]})
        Returns.partial(task_id="mapped", experiment_name=documented.output["size"]).expand(value=source.output)
    return dag, source, documented


def test_in_a_dag_only_the_keys_its_tasks_read_and_the_declared_outputs_are_pushed():
    dag, source, documented = _dag()
    assert keys_read_from(dag, "source") == {"model_uri", "metrics", "return_value"}
    assert keys_read_from(dag, "documented") == {"size"}
    context = make_context("source", dag_id="key_xcoms")
    result = source.execute(context)
    assert set(context["ti"].xcoms) - {"mlflow_run", "mlflow_parent_run"} == {"model_uri", "metrics"}
    assert result == Returns(task_id="alone").run(None)  # the return value keeps every key
    context = make_context("documented", dag_id="key_xcoms")
    documented.execute(context)
    assert set(context["ti"].xcoms) - {"mlflow_run", "mlflow_parent_run"} == {"size", "run_id"}


def test_outside_a_dag_every_key_is_pushed():
    context = make_context("alone")
    Returns(task_id="alone").execute(context)
    assert {"model_uri", "metrics", "run_id", "size"} <= set(context["ti"].xcoms)
