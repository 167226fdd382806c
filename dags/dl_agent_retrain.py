"""dl_agent_retrain: retrain weekly, and whenever the training-data Asset is updated."""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable
from dlagent.operators.pipeline import FinishPipelineOperator
from dlagent.operators.retrain import RetrainConfOperator
from dlagent.params import pipeline_params, templated
from dlagent.settings import retrain_cron

PIPELINE_DAG_ID = "dl_agent_pipeline"
# Publish an event on this Asset when new training data lands (see DOC).
TRAINING_DATA = Asset(name="dlagent_training_data", uri="dlagent://training-data", group="dlagent")

RETRAIN_CRON = retrain_cron()  # DLAGENT_RETRAIN_CRON; None: only the Asset's events start a run
ON_THE_CLOCK = f"**on the cron `{RETRAIN_CRON}` (UTC)** and " if RETRAIN_CRON else ""

DOC = f"""
### dlagent retrain
Runs `dl_agent_pipeline` again {ON_THE_CLOCK}**whenever the Asset `dlagent_training_data`
is updated**, with this DAG's Params as the pipeline's settings (the same trigger form as
`dl_agent_pipeline`). The clock is the environment variable `DLAGENT_RETRAIN_CRON` where the
DAG is parsed: unset, `0 3 * * 1` (Mondays 03:00 UTC); `off`, new data only.
""" + """
* **retrain_conf** builds the pipeline run's conf: the Params, updated by the `conf` mapping
  in the `extra` of the asset events that started this run (the latest wins), checked
  against the pipeline's Params before anything is triggered.
* **trigger_pipeline** starts `dl_agent_pipeline` (run id `retrain__<this run id>`, so a
  retry does not start a second one) and waits for it in the triggerer; this run fails if
  the pipeline run fails. The pipeline's gate decides whether the retrained model replaces
  the champion.
* **finish** closes this run's MLflow parent run.

Announce new data from a producer task (`outlets=[Asset("dlagent_training_data", uri="dlagent://training-data")]`,
extra set through `outlet_events`) or through the REST API:
`POST /api/v2/assets/events` with `{"asset_id": <id>, "extra": {"conf": {"dataset": "npz:/data/new.npz"}}}`.
"""

with DAG(
    dag_id="dl_agent_retrain",
    description="Retrain on a schedule and when the training data changes; the gate decides what ships.",
    # No start_date and run_immediately=0: switching the DAG on waits for the next cron time
    # (by default the next Monday) instead of retraining at once for the one just past.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(RETRAIN_CRON, timezone="UTC", run_immediately=timedelta(0)), assets=[TRAINING_DATA],
    ) if RETRAIN_CRON else [TRAINING_DATA],
    catchup=False,
    max_active_runs=1,
    params=pipeline_params(),
    render_template_as_native_obj=True,
    default_args={"owner": "dlagent", "retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["dlagent", "training", "scheduled"],
    doc_md=DOC,
) as dag:
    retrain_conf = RetrainConfOperator(
        task_id="retrain_conf", settings=templated(pipeline_params()), experiment_name="{{ params.experiment_name }}",
    )
    trigger = TriggerDagRunOperator(
        task_id="trigger_pipeline",
        trigger_dag_id=PIPELINE_DAG_ID,
        trigger_run_id="retrain__{{ run_id }}",
        conf=retrain_conf.output,
        skip_when_already_exists=True,
        wait_for_completion=True,
        deferrable=True,
        poke_interval=15,
        allowed_states=["success"],
        failed_states=["failed"],
    )
    finish = FinishPipelineOperator(
        task_id="finish", trigger_rule="all_done", experiment_name="{{ params.experiment_name }}",
    )
    retrain_conf >> trigger >> finish
