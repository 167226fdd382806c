"""dl_agent_pipeline: validate -> agent (budget) -> tune (N mapped workers) -> agent -> train -> compress (mapped) -> evaluate -> agent -> deploy / retune / stop."""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG
from dlagent.operators.agent import AgentOperator, PlanBranchOperator, PlanConfOperator
from dlagent.operators.compress import CompressionCandidatesOperator, CompressOperator
from dlagent.operators.deploy import DeployOperator
from dlagent.operators.evaluate import EvaluateOperator
from dlagent.operators.pipeline import FinishPipelineOperator, ValidateInputsOperator
from dlagent.operators.train import TrainOperator
from dlagent.operators.tune import CreateStudyOperator, TuneOperator, TuneSummaryOperator
from dlagent.params import DATA_PARAM_NAMES, GATE_PARAM_NAMES, TRAIN_PARAM_NAMES, pipeline_params, templated, tune_settings_templated

DOC = """
### dlagent pipeline
Trains a Keras model on the chosen data set, evaluates it on a held-out test split and tracks
everything in MLflow (one parent run per DAG run, a child run per task).

* **validate_inputs** refuses bad settings or data before any compute.
* **agent_budget** (the agent, before any trial) plans the first tuning round from the data
  set's size and shape and the free memory: how many trials (at most the Params' `n_trials`),
  how many workers (at most `tuning_workers`), and short trials with a later first pruning rung
  (the final training continues the best trial); `agent_policy: off` runs the Params as given.
* **create_study** creates the Optuna study (named from this DAG run) once; **tune** runs
  `tuning_workers` mapped workers sharing it until it holds `n_trials` trials (pruned ones
  count); **tune_summary** logs best params and plots on the parent run.
* **agent_plan** (the agent, `agent_policy`) reads the study, the trials' learning curves, the
  champion and the free CPUs in MLflow and plans the training (epochs, dropout, learning rate,
  in-training controller) and the compression candidates; every decision with its reason is in
  its log and in its MLflow run (`decisions.json`). `agent_policy: off` runs the Params as given.
* **train** trains with the best parameters and the agent's settings, logging per-epoch metrics and the model.
  `model` is `auto` (the default: `cnn` for images, `mlp` for a table's rows), a built-in (`cnn`, `resnet`, `mlp`)
  or your own builder `include.<module>:<function>`
  (its `model_args` tunable as `model_args.<key>`); `init_from` fine-tunes an existing model
  (e.g. `models:/dlagent-classifier@champion`) in two phases instead of training from scratch.
* **compression_candidates** lists the candidates; **compress** (one mapped task each) prunes,
  distils and/or quantizes (TFLite) and measures size, the validation and test metrics and latency.
* **evaluate** picks the most compressed candidate within the budget of the primary metric
  (`metric`: accuracy, auc, f1_macro; rmse, mae, r2 for `task: regression`) on the validation
  split, measures the trained model, that candidate and the deployed champion on the same test
  split (per-class metrics, confusion matrix, explanation plots) and gates the candidate:
  `blessed` with its reasons.
* **deploy** registers a blessed candidate in the MLflow Model Registry (alias `champion`,
  former one `previous`) and writes the serving bundle; otherwise it is *skipped* and its
  log says why.
* **agent_decide** reads the evaluation and decides `deploy`, `retune` (a follow-up run with
  the agent's plan as its conf, while `retune_budget` lasts) or `stop`; **follow_plan** takes that branch.
* **finish** closes the MLflow parent run (FAILED if any task failed).

Open the MLflow UI (`make mlflow-ui`) and look for the experiment named in the form.
"""

with DAG(
    dag_id="dl_agent_pipeline",
    description="Train, evaluate and track a Keras model, steered by validated Params.",
    schedule=None,
    catchup=False,
    params=pipeline_params(),
    render_template_as_native_obj=True,
    default_args={"owner": "dlagent", "retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["dlagent", "training"],
    doc_md=DOC,
) as dag:
    common = {"experiment_name": "{{ params.experiment_name }}"}
    data_options = templated(DATA_PARAM_NAMES)

    gate_thresholds = templated(GATE_PARAM_NAMES)
    validate = ValidateInputsOperator(
        task_id="validate_inputs", dataset="{{ params.dataset }}", train_config=templated(TRAIN_PARAM_NAMES),
        data_options=data_options, compression_candidates="{{ params.compression_candidates }}",
        gate_thresholds=gate_thresholds, model_name="{{ params.model_name }}",
        search_space="{{ params.search_space }}", tuning=tune_settings_templated(),
        agent_policy="{{ params.agent_policy }}", **common,
    )
    agent = {"policy": "{{ params.agent_policy }}", "champion_name": "{{ params.model_name }}", **common}
    agent_budget = AgentOperator(
        task_id="agent_budget", phase="budget", request={
            "n_trials": "{{ params.n_trials }}", "n_workers": "{{ params.tuning_workers }}",
            "trial_epochs": "{{ params.tune_trial_epochs }}", "min_trial_epochs": "{{ params.tune_min_trial_epochs }}",
            "search_space": "{{ params.search_space }}", "seed_studies": "{{ params.tune_seed_studies }}", "data": validate.output["data"],
        }, **agent,
    )
    tuning = {
        "budget": agent_budget.output["tune"],
        "dataset": "{{ params.dataset }}", "data_options": data_options, "train_config": templated(TRAIN_PARAM_NAMES),
        "search_space": "{{ params.search_space }}", "n_trials": "{{ params.n_trials }}", "timeout_s": "{{ params.tune_timeout_s }}",
        "trial_epochs": "{{ params.tune_trial_epochs }}", "min_trial_epochs": "{{ params.tune_min_trial_epochs }}",
        "sampler": "{{ params.sampler }}", "pruner": "{{ params.pruner }}", "metric": "{{ params.tune_metric }}",
        "data": validate.output["data"], **common,
    }
    create_study = CreateStudyOperator(task_id="create_study", n_workers="{{ params.tuning_workers }}",
                                       seed_studies="{{ params.tune_seed_studies }}", **tuning)
    tune = TuneOperator.partial(task_id="tune", **tuning).expand(worker_index=create_study.output)
    tune_summary = TuneSummaryOperator(task_id="tune_summary", **tuning)
    agent_plan = AgentOperator(task_id="agent_plan", phase="plan", **agent)
    train = TrainOperator(
        task_id="train", dataset="{{ params.dataset }}", train_config=templated(TRAIN_PARAM_NAMES),
        overrides=[tune_summary.output["best_params"], agent_plan.output["train"]], controller=agent_plan.output["controller"],
        warm_start=agent_plan.output["warm_start"], data_options=data_options, **common,
    )
    data = {"dataset": "{{ params.dataset }}", "data_options": data_options, "seed": "{{ params.seed }}"}
    candidates = CompressionCandidatesOperator(task_id="compression_candidates", candidates="{{ params.compression_candidates }}",
                                               planned=agent_plan.output["compress"], seed="{{ params.seed }}", **common)
    compress = CompressOperator.partial(task_id="compress", model_uri=train.output["model_uri"], **data, **common).expand(
        compression=candidates.output)
    evaluate = EvaluateOperator(
        task_id="evaluate", model_uri=train.output["model_uri"], candidates=compress.output, model_name="{{ params.model_name }}",
        thresholds=gate_thresholds, **data, **common,
    )
    agent_decide = AgentOperator(task_id="agent_decide", phase="decide", **agent)
    follow_plan = PlanBranchOperator(task_id="follow_plan", plan=agent_decide.output, deploy_task_id="deploy",
                                     retune_task_id="retune_conf", stop_task_id="stop", allow_retune="{{ params.retune_budget > 0 }}")
    deploy = DeployOperator(task_id="deploy", evaluation=evaluate.output, model_name="{{ params.model_name }}",
                            thresholds=gate_thresholds, **common)
    retune_conf = PlanConfOperator(
        task_id="retune_conf", plan=agent_decide.output, observed_run_id=agent_decide.output["observed_run_id"],
        base_conf={"experiment_name": "{{ params.experiment_name }}", "dataset": "{{ params.dataset }}",
                   "model_name": "{{ params.model_name }}", "agent_policy": "{{ params.agent_policy }}",
                   "retune_budget": "{{ params.retune_budget - 1 }}", **data_options},  # the follow-up reads the same data, task and metric
        **common,
    )
    retune = TriggerDagRunOperator(task_id="retune", trigger_dag_id="dl_agent_pipeline", trigger_run_id="retune__{{ run_id }}",
                                   conf=retune_conf.output, skip_when_already_exists=True, wait_for_completion=False)
    stop = EmptyOperator(task_id="stop")
    finish = FinishPipelineOperator(
        task_id="finish",
        collect={"metric": "evaluate.metric", "test_metric": "evaluate.test_metric", "baseline_test_metric": "evaluate.baseline_test_metric",
                 "test_accuracy": "evaluate.test_accuracy", "test_loss": "evaluate.test_loss",
                 "model_uri": "train.model_uri", "train_run_id": "train.run_id", "best_val_accuracy": "train.metrics.best_val_accuracy",
                 "best_val_metric": "train.best_val_metric", "keras_test_metric": "evaluate.reference_test_metric",
                 "tune_best_value": "tune_summary.best_value", "study_name": "tune_summary.study_name",
                 "candidate": "evaluate.candidate.candidate", "candidate_size_bytes": "evaluate.candidate.metrics.size_bytes",
                 "keras_test_accuracy": "evaluate.reference.metrics.test_accuracy",
                 "deployed_version": "deploy.version", "champion_uri": "deploy.champion_uri", "agent_action": "agent_decide.action",
                 "followed": "follow_plan"},
        **common,
    )
    validate >> agent_budget >> create_study >> tune >> tune_summary >> agent_plan >> train >> candidates >> compress >> evaluate >> agent_decide
    agent_decide >> follow_plan >> [deploy, retune_conf, stop]
    retune_conf >> retune
    [deploy, retune, stop] >> finish
