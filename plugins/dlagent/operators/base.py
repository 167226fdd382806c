"""What every dlagent operator shares: the MLflow hook, the run context, step runs.

One DAG run is one MLflow parent run; each task (and each mapped task instance) is a child
run. Both are found again by tags derived from the DAG run, so a retried or cleared task
continues its own run rather than starting a second one.

A step whose child run FINISHED records its result there (``dlagent/result.json``, with a
digest of the task's rendered inputs). Clearing the task, or the whole DAG run, then returns
that result instead of computing it again: training and compression are not deterministic, so
a second training would hand the deploy task another model under the same DAG run, which the
registry's idempotency key refuses (one DAG run deploys one model). Changed inputs (a fixed
Param, a changed upstream result), a failed or deleted child run compute anew.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseOperator

from dlagent.hooks.mlflow import MLflowHook
from dlagent.links import MLFLOW_PARENT_XCOM, MLFLOW_RUN_XCOM, MLflowRunLink
from dlagent.ml import mlflow_names as names
from dlagent.settings import redact_text, redact_url

DEFAULT_EXPERIMENT = "dlagent"


def airflow_ids(context) -> dict:
    """dag_id, run_id, task_id and map_index of the running task instance."""
    ti = context["ti"]
    dag_run = context["dag_run"]
    map_index = getattr(ti, "map_index", -1)
    return {
        "dag_id": getattr(dag_run, "dag_id", None) or ti.dag_id,
        "run_id": dag_run.run_id,
        "task_id": ti.task_id,
        "map_index": -1 if map_index is None else int(map_index),
    }


def airflow_tags(ids: dict) -> dict:
    return {names.airflow_tag(name): str(value) for name, value in ids.items()}


#: Largest XCom a dlagent task may return (JSON, UTF-8 bytes): XCom is for ids, URIs, metrics and
#: plans; models, arrays and tables travel as MLflow artifacts.
MAX_XCOM_BYTES = 64 * 1024


def check_xcom_value(task_id: str, value) -> int:
    """Return the JSON size of ``value``; fail the task (no retry) if it is not JSON or too big.

    Both are bugs or misuse a retry cannot fix, so the task fails at once with what to do.
    """
    import json

    from airflow.sdk.exceptions import AirflowFailException

    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise AirflowFailException(
            f"task {task_id!r} returned an XCom that is not JSON ({exc}); return plain JSON (str, int, float, bool, "
            f"None, lists and dicts of them), e.g. an MLflow URI instead of an object."
        ) from exc
    size = len(text.encode("utf-8"))
    if size > MAX_XCOM_BYTES:
        raise AirflowFailException(
            f"task {task_id!r} returned {size} bytes of XCom, over the {MAX_XCOM_BYTES}-byte limit; keep XCom to small "
            f"JSON (ids, URIs, metrics) and log large results to MLflow as artifacts."
        )
    return size


def keys_read_from(dag, task_id: str) -> set[str]:
    """The XCom keys of task ``task_id`` that a task of ``dag`` reads through an XComArg
    (``task.output["key"]``), in its templated fields or, for a mapped task, in its partial or
    expanded arguments."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.definitions.xcom_arg import XComArg

    keys = set()
    for task in dag.tasks:
        if isinstance(task, MappedOperator):
            sources = [task.partial_kwargs, getattr(task.expand_input, "value", None)]
        else:
            sources = [getattr(task, name, None) for name in task.template_fields]
        for source in sources:
            for operator, key in XComArg.iter_xcom_references(source):
                if operator.task_id == task_id and key:
                    keys.add(key)
    return keys


class DlagentOperator(BaseOperator):
    """Base class: holds the MLflow connection and experiment; opens parent and step runs."""

    template_fields: Sequence[str] = ("experiment_name",)
    ui_color = "#e8f4fd"
    # "MLflow run" in the Airflow UI: evaluated when the task ends, from the XComs below (dlagent.links).
    operator_extra_links = (MLflowRunLink(),)
    #: Result keys pushed as their own XCom in a DAG even when none of its tasks reads them as
    #: ``task.output[key]``: the outputs documented for other DAGs, tools and the REST API.
    output_keys: tuple[str, ...] = ()
    #: The MLflow step (``mlflow_names.STEP_*``) this operator runs in its own child run, or
    #: ``None``. A step's finished result is recorded and returned again to a cleared task.
    step: str | None = None

    def __init__(self, *, experiment_name: str = DEFAULT_EXPERIMENT, mlflow_conn_id: str = MLflowHook.default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.experiment_name = experiment_name
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context):
        """Run the step; bad input fails the task at once, without retries (a retry cannot fix it)."""
        from airflow.sdk.exceptions import AirflowFailException

        from dlagent.errors import ConfigError

        self._pushed: dict = {}
        self._finished_step_run: str | None = None
        try:
            recorded = self._recorded_result(context)
            result = self.run(context) if recorded is None else recorded
        except ConfigError as exc:
            raise AirflowFailException(f"invalid input, nothing was run: {exc}") from exc
        if self.do_xcom_push:
            check_xcom_value(self.task_id, result)
        if isinstance(result, dict) and self.do_xcom_push:
            # A top-level key is also its own XCom, so `task.output["model_uri"]` works (XComArg's []
            # selects an XCom key), like @task(multiple_outputs=True): in a DAG, the keys one of its
            # tasks reads that way and the operator's `output_keys`; outside a DAG, every key. Each
            # push is a call to Airflow's execution API (about 9 ms): pushing every key cost about
            # 0.1 s a task in `dags test`, for values the return value already holds.
            for key in self.key_xcoms(result):
                context["ti"].xcom_push(key=key, value=result[key])
        if recorded is None:
            self._record_result(context, result)
        return result

    def key_xcoms(self, result: dict) -> list[str]:
        """The keys of ``result`` pushed as their own XCom (see :meth:`execute`)."""
        if not self.has_dag():
            return [str(key) for key in result]
        wanted = set(self.output_keys) | keys_read_from(self.dag, self.task_id)
        return [str(key) for key in result if str(key) in wanted]

    def push_xcom(self, context, key: str, value) -> None:
        """Push an XCom besides the result; it is recorded with the result and pushed again when reused."""
        self._pushed[key] = value
        context["ti"].xcom_push(key=key, value=value)

    def _inputs_digest(self, context) -> str:
        """What the step was computed from: the task's identity and its rendered templated fields
        (the Params and upstream results it reads)."""
        fields = {name: _plain(getattr(self, name, None)) for name in self.template_fields}
        text = json.dumps({"operator": type(self).__qualname__, "task": airflow_ids(context), "inputs": fields},
                          sort_keys=True, default=repr)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def uses_step_run(self) -> bool:
        """Whether this task runs its step in a child run (an operator may say no for some settings)."""
        return self.step is not None

    def _recorded_result(self, context) -> dict | list | None:
        """The result this step recorded when it last finished with the same inputs, else ``None``.

        A look-up that fails (MLflow unreachable) computes the step: its own error handling then
        says what is wrong, as it would without a recorded result."""
        if not self.uses_step_run():
            return None
        try:
            return self._read_recorded_result(context)
        except Exception as exc:  # noqa: BLE001 - the step itself reports the failure, with its context
            self.log.warning("could not read whether MLflow %s run of this task already finished (%s: %s): computing it",
                             self.step, type(exc).__name__, redact_text(str(exc).splitlines()[0] if str(exc) else ""))
            return None

    def _read_recorded_result(self, context) -> dict | list | None:
        client = self.hook.client
        experiment = client.get_experiment_by_name(self.experiment_name)  # never created by a look-up
        if experiment is None:
            return None
        run = names.find_run(client, experiment.experiment_id, _step_key(context))
        if run is None or run.info.status != "FINISHED" or names.RESULT_INPUTS_TAG not in run.data.tags:
            return None
        run_id = run.info.run_id
        if run.data.tags[names.RESULT_INPUTS_TAG] != self._inputs_digest(context):
            self.log.info("MLflow %s run %s finished before with other inputs: computing the step again", self.step, run_id)
            return None
        with tempfile.TemporaryDirectory(prefix="dlagent-result-") as tmp:
            record = json.loads(Path(client.download_artifacts(run_id, names.RESULT_FILE, tmp)).read_text())
        self.parent_run_id(context)
        _push_run_ref(context, MLFLOW_RUN_XCOM, experiment.experiment_id, run_id)
        for key, value in record.get("xcoms", {}).items():
            self.push_xcom(context, key, value)
        self.log.info("MLflow %s run %s already finished with these same inputs (this task was cleared or re-run): "
                      "returning its recorded result, nothing is computed again; trigger a new DAG run to compute anew",
                      self.step, run_id)
        return record["result"]

    def _record_result(self, context, result) -> None:
        run_id = self._finished_step_run
        if not self.uses_step_run() or run_id is None or not isinstance(result, (dict, list)):
            return
        self.hook.client.log_dict(run_id, {"result": result, "xcoms": self._pushed}, names.RESULT_FILE)
        self.hook.client.set_tag(run_id, names.RESULT_INPUTS_TAG, self._inputs_digest(context))

    def run(self, context):
        raise NotImplementedError

    @cached_property
    def hook(self) -> MLflowHook:
        return MLflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def parent_run_id(self, context) -> str:
        """The DAG run's MLflow parent run (created by whichever task needs it first)."""
        from dlagent.ml.tracking import find_or_create_run, run_key

        ids = airflow_ids(context)
        experiment_id = self.hook.get_experiment_id(self.experiment_name)
        run_id, _ = find_or_create_run(
            self.hook.client, experiment_id, run_key(ids["dag_id"], ids["run_id"]),
            run_name=f"{ids['dag_id']} {ids['run_id']}",
            tags={names.AIRFLOW_DAG_ID_TAG: ids["dag_id"], names.AIRFLOW_RUN_ID_TAG: ids["run_id"], names.KIND_TAG: names.KIND_PIPELINE},
        )
        _push_run_ref(context, MLFLOW_PARENT_XCOM, experiment_id, run_id)
        return run_id

    @contextmanager
    def step_run(self, context, step: str | None = None):
        """Yield this task's child run id; end it FINISHED, or FAILED when the step raises.

        ``step`` names what the run does (tag ``dlagent.step``), by default :attr:`step`; only an
        operator that declares :attr:`step` has its finished results recorded and reused."""
        from dlagent.ml.tracking import find_or_create_run

        step = step or self.step
        ids = airflow_ids(context)
        parent = self.parent_run_id(context)
        experiment_id = self.hook.get_experiment_id(self.experiment_name)
        suffix = f"[{ids['map_index']}]" if ids["map_index"] >= 0 else ""
        run_id, created = find_or_create_run(
            self.hook.client, experiment_id, _step_key(context),
            run_name=f"{ids['task_id']}{suffix}",
            tags={**airflow_tags(ids), names.STEP_TAG: step},
            parent_run_id=parent,
        )
        _push_run_ref(context, MLFLOW_RUN_XCOM, experiment_id, run_id)  # before the work: a failed task links too
        self.log.info("MLflow %s run %s (%s) under parent %s at %s", step, run_id, "new" if created else "continued", parent,
                      redact_url(self.hook.tracking_uri))
        try:
            yield run_id
        except BaseException:
            self.hook.client.set_terminated(run_id, status="FAILED")
            raise
        self.hook.client.set_terminated(run_id, status="FINISHED")
        self._finished_step_run = run_id


def _step_key(context) -> str:
    """The idempotency key of this task instance's child run (what ``step_run`` finds it by)."""
    from dlagent.ml.tracking import run_key

    ids = airflow_ids(context)
    return run_key(ids["dag_id"], ids["run_id"], ids["task_id"], ids["map_index"])


def _plain(value):
    """``value`` as plain JSON data: mapped upstream results arrive as a lazy XCom sequence, whose
    ``repr`` names no values, so sequences become lists of their items and mappings dicts."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(item) for item in value]
    return value


def _push_run_ref(context, key: str, experiment_id: str, run_id: str) -> None:
    """Record an MLflow run as a small XCom (what the task's extra links are built from)."""
    ti = context.get("ti") if hasattr(context, "get") else None
    if ti is not None and hasattr(ti, "xcom_push"):
        # map_index: a link of a mapped instance finds its own among all its siblings' in one read
        map_index = getattr(ti, "map_index", -1)
        ti.xcom_push(key=key, value={"experiment_id": str(experiment_id), "run_id": str(run_id),
                                     "map_index": -1 if map_index is None else int(map_index)})
