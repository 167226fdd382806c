"""Operator extra links: from a task in the Airflow UI to its results, in one click.

How Airflow 3 shows an extra link (``airflow.sdk.BaseOperatorLink``):

* at the end of every try (success, failure or skip) the task runner calls
  ``get_link(operator, ti_key=<the running task instance>)`` for each link in the operator's
  ``operator_extra_links`` and stores the URL as the XCom ``_link_<ClassName>``
  (``airflow.sdk.execution_time.task_runner.finalize``);
* the DAG processor serializes only ``{name: xcom_key}`` per task; the api-server turns that back
  into an ``XComOperatorLink`` that reads the stored URL
  (``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links``).

So ``get_link`` runs in the worker, next to the task's hook, and builds the URL from small XComs
the operator pushed while it ran (:data:`MLFLOW_RUN_XCOM`, :data:`MLFLOW_PARENT_XCOM`,
:data:`REGISTERED_MODEL_XCOM`). An empty string means "no link" and the UI hides the button
(a skipped deploy has no registered version).

URL formats of the MLflow 3 UI (``mlflow/server/js`` routes): ``#/experiments/<id>/runs/<run id>``
(``/<tab>`` for a tab such as ``artifacts``) and ``#/models/<name>/versions/<version>``.

Nothing heavy is imported here: operators, DAG files and the plugin import this module.
"""

from __future__ import annotations

from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

#: XCom ``{"experiment_id", "run_id"}``: the task's own MLflow child run (``DlagentOperator.step_run``).
MLFLOW_RUN_XCOM = "mlflow_run"
#: XCom ``{"experiment_id", "run_id"}``: the DAG run's MLflow parent run (``DlagentOperator.parent_run_id``).
MLFLOW_PARENT_XCOM = "mlflow_parent_run"
#: XCom ``{"name", "version"}``: the registered model version a deploy or rollback left as champion.
REGISTERED_MODEL_XCOM = "registered_model"
#: Where the plugin's FastAPI app is mounted in the api-server (``dlagent.plugin``).
WEB_PREFIX = "/dlagent"


def run_url(ui_url: str, experiment_id: str | None, run_id: str, tab: str | None = None) -> str:
    """The MLflow UI page of a run (``tab`` e.g. ``artifacts``)."""
    base = ui_url.rstrip("/")
    if not experiment_id:  # MLflow resolves the experiment itself
        return f"{base}/#/runs/{quote(str(run_id), safe='')}"
    url = f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(str(run_id), safe='')}"
    return f"{url}/{tab}" if tab else url


def experiment_url(ui_url: str, experiment_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}"


def model_version_url(ui_url: str, name: str, version) -> str:
    """The MLflow UI page of a registered model version."""
    return f"{ui_url.rstrip('/')}/#/models/{quote(str(name), safe='')}/versions/{quote(str(version), safe='')}"


def decisions_path(dag_id: str, run_id: str) -> str:
    """Path of the plugin page of one DAG run, relative to the Airflow UI base URL."""
    return f"{WEB_PREFIX.lstrip('/')}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def _pull(ti_key, key: str):
    """An XCom of the task instance being finalized, or ``None``.

    In the worker ``ti_key`` is the running task instance (it can pull XComs); anywhere else
    (a ``TaskInstanceKey``) there is nothing to read and the link is empty.

    A task does not push every key (a task without a child run has no ``mlflow_run``), and
    asking Airflow for one XCom that does not exist makes its API client log an *error*
    ("XCom not found") in the log of every task that ends well. So the key is read once, for all
    map indexes of the task (Airflow's sequence read: an empty answer, no error). A mapped
    instance then takes the DAG run's parent run from any of them (it is the same run), and its
    own child run from the value pushed with its own ``map_index`` (none: no link).
    """
    pull = getattr(ti_key, "xcom_pull", None)
    if pull is None:
        return None
    values = pull(task_ids=ti_key.task_id, key=key)  # every map index; None when none pushed it
    if values is None or values == []:
        return None
    map_index = getattr(ti_key, "map_index", -1)
    if map_index is None or map_index < 0:
        return values  # not mapped: the one value
    values = values if isinstance(values, list) else [values]
    if key == MLFLOW_PARENT_XCOM:
        return values[0]
    return next((v for v in values if isinstance(v, dict) and v.get("map_index") == map_index), None)


def _ref(value) -> dict | None:
    """``{"experiment_id", "run_id"}`` as pushed by the operator, or ``None``."""
    if isinstance(value, dict) and isinstance(value.get("run_id"), str) and value["run_id"]:
        return value
    return None


def _ui_url(operator) -> str:
    from dlagent.hooks.mlflow import MLflowHook

    hook = getattr(operator, "hook", None)
    if not isinstance(hook, MLflowHook):
        hook = MLflowHook(mlflow_conn_id=getattr(operator, "mlflow_conn_id", MLflowHook.default_conn_name))
    return hook.ui_url


class MLflowRunLink(BaseOperatorLink):
    """The task's MLflow child run; for a task without one (validate, tune workers, finish...),
    the DAG run's parent run it worked on."""

    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:
        ref = _ref(_pull(ti_key, MLFLOW_RUN_XCOM)) or _ref(_pull(ti_key, MLFLOW_PARENT_XCOM))
        if ref is None:
            return ""
        return run_url(_ui_url(operator), ref.get("experiment_id"), ref["run_id"])


class TuningStudyLink(BaseOperatorLink):
    """The tuning study as MLflow shows it: the DAG run's parent run, on its artifacts tab
    (``optuna/*.png`` plots and ``optuna/study_summary.json``; trials are its child runs)."""

    name = "Tuning study"

    def get_link(self, operator, *, ti_key) -> str:
        ref = _ref(_pull(ti_key, MLFLOW_PARENT_XCOM))
        if ref is None:
            return ""
        return run_url(_ui_url(operator), ref.get("experiment_id"), ref["run_id"], tab="artifacts")


class RegisteredModelLink(BaseOperatorLink):
    """The registered model version the task made champion (none when the deploy was skipped)."""

    name = "Registered model"

    def get_link(self, operator, *, ti_key) -> str:
        model = _pull(ti_key, REGISTERED_MODEL_XCOM)
        if not isinstance(model, dict) or not model.get("name") or model.get("version") in (None, ""):
            return ""
        return model_version_url(_ui_url(operator), model["name"], model["version"])


class AgentDecisionsLink(BaseOperatorLink):
    """The plugin's page of this DAG run's agent decisions, served by the Airflow api-server.

    The URL is relative (``dlagent/runs/<dag_id>/<run_id>``): the Airflow UI resolves it against
    its own base URL, so it works behind a path prefix without knowing the api-server's address.
    """

    name = "Agent decisions"

    def get_link(self, operator, *, ti_key) -> str:
        dag_id, run_id = getattr(ti_key, "dag_id", None), getattr(ti_key, "run_id", None)
        if not dag_id or not run_id or _ref(_pull(ti_key, MLFLOW_RUN_XCOM)) is None:
            return ""  # the agent never opened its MLflow run: nothing to show
        return decisions_path(dag_id, run_id)


#: What the plugin registers (``AirflowPlugin.operator_extra_links``); operators declare their own.
ALL_LINKS = (MLflowRunLink(), TuningStudyLink(), RegisteredModelLink(), AgentDecisionsLink())
