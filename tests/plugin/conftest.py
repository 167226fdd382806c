"""A real MLflow store (and Optuna study) filled by running dlagent operators directly, as one
small DAG run of dl_agent_pipeline would: tuning, agent plan, training, one compressed candidate,
evaluation, agent decision, deployment. Built once per session (it trains small models); the
environment pointing at it is set only while building and, per test, by ``pipeline_env``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.operators.context import make_context

DAG_ID = "dl_agent_pipeline"
RUN_ID = "manual__2026-01-02T03:04:05.678901+00:00"  # a real run id: ':' and '+' must survive the URLs
MODEL_NAME = "plugin-test-classifier"
RESOURCES = {"cpu_count": 2, "cpus_free": 1, "load_1m": 1.0, "memory_free_gb": 4.0}
DATA = {"dataset": "digits", "data_options": {"max_samples": 400}}
TRAIN = {"model": "mlp", "epochs": 3, "units": 32, "seed": 0}
SPACE = {"learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}
NO_DROP_LIMIT = {"max_metric_drop_points": None}


@dataclass
class Pipeline:
    folder: Path
    env: dict
    contexts: dict = field(default_factory=dict)  # task label -> the context its operator ran with
    operators: dict = field(default_factory=dict)  # task label -> the operator that ran
    results: dict = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def run(self, label: str, operator, *, map_index: int = -1):
        context = make_context(operator.task_id, dag_id=DAG_ID, run_id=RUN_ID, map_index=map_index)
        self.contexts[label], self.operators[label] = context, operator
        self.results[label] = operator.execute(context)
        return self.results[label]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Pipeline:
    from dlagent.operators.agent import AgentOperator
    from dlagent.operators.compress import CompressOperator
    from dlagent.operators.deploy import DeployOperator
    from dlagent.operators.evaluate import EvaluateOperator
    from dlagent.operators.train import TrainOperator
    from dlagent.operators.tune import CreateStudyOperator, TuneOperator, TuneSummaryOperator

    folder = tmp_path_factory.mktemp("plugin-pipeline")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "DLAGENT_ARTIFACT_ROOT": str(folder / "artifacts"),
        "DLAGENT_OPTUNA_STORAGE": f"sqlite:///{folder / 'optuna.db'}",
    }
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    patch.delenv("DLAGENT_MLFLOW_UI_URL", raising=False)
    p = Pipeline(folder=folder, env=env)
    try:
        tune = {**DATA, "train_config": TRAIN, "search_space": SPACE, "n_trials": 2, "experiment_name": "plugin"}
        p.run("create_study", CreateStudyOperator(task_id="create_study", n_workers=1, **tune))
        p.run("tune", TuneOperator(task_id="tune", worker_index=0, **tune), map_index=0)
        p.run("tune_summary", TuneSummaryOperator(task_id="tune_summary", **tune))
        agent = {"policy": "rules", "champion_name": MODEL_NAME, "fixed_resources": RESOURCES, "experiment_name": "plugin"}
        p.run("agent_plan", AgentOperator(task_id="agent_plan", phase="plan", **agent))
        trained = p.run("train", TrainOperator(task_id="train", train_config=TRAIN, experiment_name="plugin", **DATA))
        compressed = p.run("compress", CompressOperator(task_id="compress", model_uri=trained["model_uri"], seed=0,
                                                        compression={"quantization": "dynamic"}, latency_runs=5,
                                                        experiment_name="plugin", **DATA), map_index=0)
        evaluation = p.run("evaluate", EvaluateOperator(task_id="evaluate", model_uri=trained["model_uri"], candidates=[compressed],
                                                        model_name=MODEL_NAME, thresholds=NO_DROP_LIMIT, explain=False,
                                                        latency_runs=5, seed=0, experiment_name="plugin", **DATA))
        p.run("agent_decide", AgentOperator(task_id="agent_decide", phase="decide", **agent))
        p.run("deploy", DeployOperator(task_id="deploy", evaluation=evaluation, model_name=MODEL_NAME, thresholds=NO_DROP_LIMIT,
                                       deploy_dir=str(folder / "deploy"), experiment_name="plugin"))
    finally:
        patch.undo()
    return p


@pytest.fixture
def pipeline_env(pipeline, monkeypatch) -> Pipeline:
    """The session's pipeline store, with this test's environment pointing at it."""
    for name, value in pipeline.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DLAGENT_MLFLOW_UI_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    return pipeline
