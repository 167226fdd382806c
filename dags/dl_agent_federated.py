"""dl_agent_federated: sites train on their own data, share only weights, which are averaged."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, TaskGroup
from dlagent.ml.federated.settings import MAX_ROUNDS
from dlagent.operators.compress import CompressionCandidatesOperator, CompressOperator
from dlagent.operators.deploy import DeployOperator
from dlagent.operators.evaluate import EvaluateOperator
from dlagent.operators.federated import (
    ROUND_RESULT_KEY,
    FederatedAggregateOperator,
    FederatedFinalizeOperator,
    FederatedLocalOperator,
    FederatedSetupOperator,
    FederatedSiteCheckOperator,
    FederatedValidateOperator,
    round_group_id,
)
from dlagent.operators.pipeline import FinishPipelineOperator
from dlagent.params import (
    DATA_PARAM_NAMES,
    FEDERATED_PARAM_NAMES,
    FEDERATED_TRAIN_PARAM_NAMES,
    GATE_PARAM_NAMES,
    federated_params,
    templated,
)

DOC = f"""
### Federated training

Each site trains on its own data and sends only model weights; the coordinator averages them,
weighted by each site's sample count (FedAvg), into the next global model.

* **validate** checks every setting and the held-out `dataset` before any compute; **check_site**
  (one per site) reads only that site's data and checks it fits (shape, task, classes), returning
  counts; **setup** logs the round-0 model and plans round 1.
* `site_queues` (one Celery queue per site): each site's `check_site` and `local` tasks run only
  on the workers listening to its queue (`dlagent.policy`, a cluster policy).
* **round_NN** (up to {MAX_ROUNDS}; `rounds` of them run): **local** (one mapped task per site:
  trains from the global weights on the site's rows, returns only a weights URI, its sample
  count and its loss) and **aggregate** (the weighted average, scored on the held-out validation
  split of `dataset`; metric `federated_val_<metric>` per round).
* The agent plans each round at the end of the task before it (setup for round 1, else the
  previous round's aggregate): which sites, local epochs, learning rate, or stop early when the
  global score has converged (the later rounds are then skipped). Its reasons are in that
  task's log and the parent run's `federated/round-NNN/round_plan.json`.
* **finalize** logs the last global model as the trained model; **compress**, **evaluate**,
  **deploy** and **finish** are the pipeline's own tasks.

`site_datasets` names one data set per site (each read only by that site's task); empty, the
training split of `dataset` is cut into `n_shards` shards (`partition`: iid or label_skew),
which is how the cost of federation is measured (`bench/federated.py`).
"""

with DAG(
    dag_id="dl_agent_federated",
    description="Federated training (FedAvg / FedProx) as Airflow tasks, then compress, evaluate and deploy.",
    schedule=None,
    catchup=False,
    params=federated_params(),
    render_template_as_native_obj=True,
    default_args={"owner": "dlagent", "retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["dlagent", "training", "federated"],
    doc_md=DOC,
) as dag:
    common = {"experiment_name": "{{ params.experiment_name }}"}
    data_options = templated(DATA_PARAM_NAMES)
    federated = {"dataset": "{{ params.dataset }}", "site_datasets": "{{ params.site_datasets }}", "data_options": data_options,
                 "train_config": templated(FEDERATED_TRAIN_PARAM_NAMES),
                 "federated": {**templated(FEDERATED_PARAM_NAMES), "seed": "{{ params.seed }}"}, **common}
    gate_thresholds = templated(GATE_PARAM_NAMES)
    validate = FederatedValidateOperator(task_id="validate", site_queues="{{ params.site_queues }}",
                                         compression_candidates="{{ params.compression_candidates }}", gate_thresholds=gate_thresholds,
                                         model_name="{{ params.model_name }}", **federated)
    check_site = FederatedSiteCheckOperator.partial(task_id="check_site", data=validate.output["data"], **federated).expand(
        site=validate.output)
    planning = {"policy": "{{ params.agent_policy }}", **federated}
    setup = FederatedSetupOperator(task_id="setup", site_checks=check_site.output, **planning)
    validate >> check_site >> setup
    model_uri = setup.output["model_uri"]
    previous, aggregates = setup, []
    for round_number in range(1, MAX_ROUNDS + 1):
        with TaskGroup(group_id=round_group_id(round_number)):
            # the round's assignments are the return value of the task before it (the setup, or the
            # previous round's aggregation, which plans this round): empty, this round is skipped
            local = FederatedLocalOperator.partial(task_id="local", model_uri=model_uri, **federated).expand(assignment=previous.output)
            aggregate = FederatedAggregateOperator(task_id="aggregate", updates=local.output, round_plan=previous.output,
                                                   previous=previous.output[ROUND_RESULT_KEY], model_uri=model_uri, **planning)
        previous = aggregate
        aggregates.append(aggregate)
    # a skipped round pushed no record: pulled by task ids (None for those), not as XComArgs, which would fail on them
    pulled = f"ti.xcom_pull(task_ids={[a.task_id for a in aggregates]!r}, key={ROUND_RESULT_KEY!r})"
    round_results = "{{ " + pulled + " }}"
    finalize = FederatedFinalizeOperator(task_id="finalize", round_results=round_results, model_uri=model_uri,
                                         trigger_rule="none_failed_min_one_success", **federated)
    data = {"dataset": "{{ params.dataset }}", "data_options": data_options, "seed": "{{ params.seed }}"}
    candidates = CompressionCandidatesOperator(task_id="compression_candidates", candidates="{{ params.compression_candidates }}",
                                               seed="{{ params.seed }}", **common)
    compress = CompressOperator.partial(task_id="compress", model_uri=finalize.output["model_uri"], **data, **common).expand(
        compression=candidates.output)
    evaluate = EvaluateOperator(task_id="evaluate", model_uri=finalize.output["model_uri"], candidates=compress.output,
                                model_name="{{ params.model_name }}", thresholds=gate_thresholds, **data, **common)
    deploy = DeployOperator(task_id="deploy", evaluation=evaluate.output, model_name="{{ params.model_name }}",
                            thresholds=gate_thresholds, **common)
    finish = FinishPipelineOperator(
        task_id="finish", trigger_rule="all_done",
        collect={"metric": "evaluate.metric", "test_metric": "evaluate.test_metric", "baseline_test_metric": "evaluate.baseline_test_metric",
                 "model_uri": "finalize.model_uri",
                 "rounds_run": "finalize.rounds_run", "best_val_metric": "finalize.best_val_metric",
                 "candidate": "evaluate.candidate.candidate", "deployed_version": "deploy.version"},
        **common,
    )
    aggregates >> finalize >> candidates >> compress >> evaluate >> deploy >> finish
