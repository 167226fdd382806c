"""dl_agent_watch: watch the champion's metric in MLflow; when it degrades, let the agent plan a
new dl_agent_pipeline run and trigger it with the plan as its conf."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param
from dlagent.operators.agent import AgentOperator, PlanConfOperator
from dlagent.operators.pipeline import FinishPipelineOperator
from dlagent.sensors.mlflow_metric import MLflowMetricSensor

PIPELINE_DAG_ID = "dl_agent_pipeline"
WATCH_TIMEOUT = timedelta(hours=23)  # a daily run gives up (skips) before the next one starts
POKE_INTERVAL = timedelta(minutes=10)

DOC = """
### dlagent watch
Every day, watches the **champion** of a registered model in MLflow and, when its metric
degrades, lets the **agent** plan a new `dl_agent_pipeline` run and triggers it.

* **watch_champion** (`MLflowMetricSensor`) waits until the metric `metric` (default
  `test_accuracy`) of the model version under alias `champion` of `model_name` is below
  `threshold` (`condition` = `below`), above it (`condition` = `above`, for an error metric
  such as `test_rmse` of a regression champion), or has drifted more than `max_drift` from
  `reference` (`condition` = `drift`). It waits in the triggerer (`deferrable`, the default) or frees its
  worker slot between checks (reschedule mode), every 10 minutes; after 23 hours it gives up
  and the rest of the run is skipped (nothing to do that day).
* **agent** (`AgentOperator`, phase `plan`, policy `policy`) observes in MLflow the pipeline
  run that produced the champion (trials, learning curves, evaluation, compression
  candidates) and decides a plan; every decision and its reason is in the task log and in
  `decisions.json` of an `agent` MLflow run.
* **plan_conf** turns the plan into the conf of a pipeline run: the observed run's settings,
  changed as the plan says (learning rate, epochs, dropout, tuning trials and workers, search
  space...), checked against `dl_agent_pipeline`'s Params.
* **trigger_pipeline** starts `dl_agent_pipeline` with that conf (run id `agent__<this run id>`,
  so a retry does not start a second one).
* **finish** closes this run's MLflow parent run.

See `docs/agent.md` for the plan format and how to read the agent's decisions.
"""


def watch_params() -> dict[str, Param]:
    return {
        "model_name": Param("dlagent-classifier", type="string", minLength=1, title="Registered model",
                            description="The registered MLflow model whose 'champion' alias is watched."),
        "metric": Param("test_accuracy", type="string", minLength=1, title="Metric",
                        description="The champion's metric to watch (its dlagent.metric.<name> tag, else its run's metric)."),
        "condition": Param("below", type="string", enum=["below", "above", "drift"], title="Condition",
                           description="'below': fire when the metric is under 'threshold' (accuracy, auc, f1_macro, r2: "
                                       "higher is better); 'above': fire when it is over 'threshold' (an error metric such "
                                       "as test_rmse or test_mae); 'drift': fire when it moved more than 'max_drift' away "
                                       "from 'reference'."),
        "threshold": Param(0.9, type="number", title="Threshold",
                           description="With condition 'below' or 'above': the value past which a new pipeline run is planned."),
        "reference": Param(None, type=["null", "number"], title="Reference value",
                           description="With condition 'drift': the metric's expected value (e.g. the champion's test "
                                       "accuracy when it was deployed). Required for 'drift'."),
        "max_drift": Param(0.02, type="number", minimum=0, title="Maximum drift",
                           description="With condition 'drift': the largest accepted distance from 'reference'."),
        "deferrable": Param(True, type="boolean", title="Wait in the triggerer",
                            description="True: the sensor waits in the triggerer (no worker slot); false: reschedule mode "
                                        "(a worker slot only while checking)."),
        "policy": Param("rules", type="string", minLength=1, title="Agent policy",
                        description="'rules', 'learning' (learns across runs; state in MLflow) or a Policy class path."),
        "experiment_name": Param("dlagent", type="string", minLength=1, maxLength=200, title="MLflow experiment",
                                 description="Experiment of this run's MLflow runs and of the triggered pipeline run."),
    }


def wait_mode_from_params(context) -> None:
    """Before the sensor runs: defer to the triggerer, or reschedule, as the `deferrable` Param says."""
    context["task"].deferrable = bool(context["params"]["deferrable"])


with DAG(
    dag_id="dl_agent_watch",
    description="Watch the champion's metric; when it degrades, the agent plans and triggers a new pipeline run.",
    schedule="@daily",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params=watch_params(),
    render_template_as_native_obj=True,
    default_args={"owner": "dlagent", "retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["dlagent", "agent", "monitoring"],
    doc_md=DOC,
) as dag:
    watch = MLflowMetricSensor(
        task_id="watch_champion",
        model_name="{{ params.model_name }}",
        alias="champion",
        metric="{{ params.metric }}",
        op="{{ '>' if params.condition == 'above' else '<' }}",
        threshold="{{ params.threshold if params.condition in ('below', 'above') else None }}",
        reference="{{ params.reference if params.condition == 'drift' else None }}",
        max_drift="{{ params.max_drift if params.condition == 'drift' else None }}",
        deferrable=True,
        mode="reschedule",
        poke_interval=POKE_INTERVAL.total_seconds(),
        timeout=WATCH_TIMEOUT.total_seconds(),
        soft_fail=True,
        pre_execute=wait_mode_from_params,
    )
    agent = AgentOperator(
        task_id="agent",
        phase="plan",
        policy="{{ params.policy }}",
        champion_name="{{ params.model_name }}",
        observe_run_id="{{ (ti.xcom_pull(task_ids='watch_champion') or {}).get('run_id') }}",
        experiment_name="{{ params.experiment_name }}",
    )
    plan_conf = PlanConfOperator(
        task_id="plan_conf",
        plan=agent.output,
        observed_run_id=agent.output["observed_run_id"],
        base_conf={"experiment_name": "{{ params.experiment_name }}"},
        experiment_name="{{ params.experiment_name }}",
    )
    trigger = TriggerDagRunOperator(
        task_id="trigger_pipeline",
        trigger_dag_id=PIPELINE_DAG_ID,
        trigger_run_id="agent__{{ run_id }}",
        conf=plan_conf.output,
        skip_when_already_exists=True,
        wait_for_completion=False,
    )
    finish = FinishPipelineOperator(
        task_id="finish",
        trigger_rule="none_skipped",  # records a failure; a day with nothing to do stays skipped
        collect={"action": "agent.action"},
        experiment_name="{{ params.experiment_name }}",
    )
    watch >> agent >> plan_conf >> trigger >> finish
