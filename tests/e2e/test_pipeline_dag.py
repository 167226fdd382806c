"""The whole dl_agent_pipeline through real Airflow (`airflow dags test`), on tiny data.

Once with the Airflow metadata DB and the MLflow backend store in SQLite, once with both in
PostgreSQL (required on CI). Whole-DAG runs are slow (Airflow start-up), so they are few.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import PROJECT_DIR
from tests.pipeline_confs import BUILDER_CONF, TINY_CONF

pytestmark = pytest.mark.slow


def _dags_test(env: dict, conf: dict) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).with_name("airflow"))
    return subprocess.run(
        [airflow, "dags", "test", "dl_agent_pipeline", "-c", json.dumps(conf)],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600,
    )


def _stack(tmp_path, *, airflow_db: str, mlflow_uri: str, optuna_url: str) -> dict:
    from dlagent_dev import cli

    env = cli.stack_env()
    env.update({
        "DLAGENT_HOME": str(tmp_path / "home"),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "DLAGENT_OPTUNA_STORAGE": optuna_url,
        "DLAGENT_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    })
    cli.setup(env)
    return env


def client_artifact(mlflow_uri: str, run_id: str, path: str) -> str:
    import tempfile

    import mlflow

    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tempfile.mkdtemp(), tracking_uri=mlflow_uri)


def _pipeline_runs(mlflow_uri: str, experiment: str = "e2e") -> dict:
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags.get("airflow.task_id", "parent"): r for r in runs}


def _assert_finished_pipeline(result, mlflow_uri, optuna_url, conf=TINY_CONF):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = _pipeline_runs(mlflow_uri)
    assert {"parent", "train", "evaluate"} <= set(runs)
    parent = runs["parent"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["airflow.dag_id"] == "dl_agent_pipeline"
    assert parent.data.metrics["test_accuracy"] > 0.5  # 4 epochs of an MLP on 300 digits
    for step in ("train", "evaluate"):
        assert runs[step].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[step].info.status == "FINISHED"
    assert runs["train"].data.params["model"] == conf["model"]  # the conf reached the training task

    # tune: one study named from the DAG run, exactly n_trials finished trials from both workers
    import optuna

    (name,) = optuna.get_all_study_names(optuna_url)
    assert name.startswith("dl_agent_pipeline.")
    study = optuna.load_study(study_name=name, storage=optuna_url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == conf["n_trials"]
    client = MlflowClient(mlflow_uri)
    trial_runs = client.search_runs([parent.info.experiment_id], f"tags.`optuna.study` = '{name}' and tags.`optuna.trial_number` != ''")
    assert {r.data.tags["airflow.map_index"] for r in trial_runs} <= {"0", "1"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)
    assert {r.data.params["epochs"] for r in trial_runs} == {str(conf["tune_trial_epochs"])}  # the Param capped every trial
    assert study.user_attrs["dlagent.settings"]["min_resource"] == conf["tune_min_trial_epochs"]  # the pruner's first rung
    for name, spec in conf["search_space"].items():  # every trial trained with its sampled values, model arguments too
        assert all(spec.get("low", 0) <= float(r.data.params[name]) <= spec.get("high", 1) for r in trial_runs), name
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    # lineage: the trials, the training and the evaluation each recorded the one data set they read
    recorded = [run.inputs.dataset_inputs for run in [*trial_runs, runs["train"], runs["evaluate"]]]
    assert all(len(inputs) == 1 for inputs in recorded)
    assert len({(i[0].dataset.name, i[0].dataset.digest) for i in recorded}) == 1 and recorded[0][0].dataset.name == "digits"
    assert {t.value for i in recorded for t in i[0].tags} == {"tuning", "training", "evaluation"}
    # the agent's plan (decisions.json of the agent_plan run) re-parameterized training: the
    # final training run's MLflow params are the conf, then the best trial's, then the plan's
    plan = json.loads(Path(client.download_artifacts(runs["agent_plan"].info.run_id, "decisions.json")).read_text())
    assert plan["reasons"] and runs["agent_plan"].data.params.get("policy") == "rules"
    expected = {"epochs": conf["epochs"], "model": conf["model"], **study.best_params, **plan["train"]}
    expected.update({f"model_args.{k}": v for k, v in expected.pop("model_args", {}).items()})  # MLflow params are flat
    for name, value in expected.items():
        logged = runs["train"].data.params[name]
        assert (float(logged) == pytest.approx(value)) if isinstance(value, float) else logged == str(value), name
    assert "epochs" in plan["train"]  # the rules policy sets the final epochs from the learning curve
    # the best trial saved its weights, so the plan continues from them and the train task did
    best_run = next(r for r in client.search_runs([parent.info.experiment_id], "tags.`optuna.trial_number` != ''")
                    if int(r.data.tags["optuna.trial_number"]) == study.best_trial.number)
    assert best_run.data.tags.get("dlagent.checkpoint") == "checkpoint/model.keras"
    assert plan["warm_start"] == f"runs:/{best_run.info.run_id}/checkpoint/model.keras"
    assert runs["train"].data.tags["dlagent.warm_start"] == plan["warm_start"]

    # compress (one mapped task per candidate the plan lists) -> evaluate (gate) -> deploy
    from dlagent.ml.compression import CompressionConfig

    compress_runs = client.search_runs([parent.info.experiment_id], "tags.`airflow.task_id` = 'compress'")
    planned = sorted(CompressionConfig.from_dict(c).label for c in plan["compress"])
    assert len(planned) >= 2 and sorted(r.data.tags["dlagent.candidate"] for r in compress_runs) == planned
    assert runs["evaluate"].data.tags["dlagent.gate.blessed"] == "true", runs["evaluate"].data.tags.get("dlagent.gate.reasons")
    assert runs["agent_decide"].data.tags["dlagent.action"] == "deploy"  # blessed, and no champion yet
    assert parent.data.tags["dlagent.deploy"] == "deployed dlagent-classifier version 1"
    from dlagent.ml.registry import get_champion

    champion = get_champion(MlflowClient(mlflow_uri, registry_uri=mlflow_uri), "dlagent-classifier")
    assert champion["version"] == "1" and champion["tflite_artifact"]


def test_pipeline_on_sqlite_with_a_user_model_builder(tmp_path):
    """The user's builder from include/ (with a registered custom layer) through every step: one of
    its model arguments tuned, the best trial's checkpoint warm-started, compressed, gated, deployed."""
    mlflow_uri, optuna_url = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    env = _stack(tmp_path, airflow_db=f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}", mlflow_uri=mlflow_uri, optuna_url=optuna_url)
    _assert_finished_pipeline(_dags_test(env, BUILDER_CONF), mlflow_uri, optuna_url, BUILDER_CONF)
    train = _pipeline_runs(mlflow_uri)["train"]
    assert train.data.params["model_args.depth"] == "1" and 16 <= int(train.data.params["model_args.width"]) <= 64


def _regression_csv(folder: Path) -> str:
    """make_friedman1 (300 rows, 10 features, 5 of them informative) plus a categorical column
    ``band`` that shifts the target and a column ``day`` of ISO dates (weekends 2 higher: calendar
    columns), as a CSV in the data root, with gaps: every 23rd ``x3``, every 29th ``band`` and every
    31st ``day`` empty (the runs impute them), and a last column ``id``, a row key the runs
    leave out (``drop_columns``; refused as an identifier otherwise)."""
    from datetime import date, timedelta

    import numpy as np
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=300, noise=0.5, random_state=0)
    bands = np.random.default_rng(0).choice(["low", "mid", "high"], len(y))
    y = y + np.select([bands == "low", bands == "high"], [-3.0, 3.0], 0.0)
    days = [date(2025, 1, 6) + timedelta(days=i * 5) for i in range(len(y))]  # every 5th day: all weekdays come round
    y = y + np.array([2.0 if day.weekday() >= 5 else 0.0 for day in days])
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join([*(f"x{i}" for i in range(10)), "band", "day", "y", "id"])]
    for i, (row, band, day, target) in enumerate(zip(x, bands, days, y, strict=True)):
        cells = [f"{v:.5f}" for v in row] + [band, day.isoformat(), f"{target:.5f}"]
        cells[3] = "" if i % 23 == 5 else cells[3]
        cells[10] = "" if i % 29 == 7 else cells[10]
        cells[11] = "" if i % 31 == 9 else cells[11]
        lines.append(",".join([*cells, f"row-{i:04d}"]))
    (folder / "friedman.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{folder / 'friedman.csv'}"


def _assert_bundle_scores_raw_rows_like_the_keras_model(env: dict, registry, conf: dict) -> None:
    """The deployed bundle carries the encoding: raw test rows (words, gaps) scored through it
    give the Keras champion's predictions on the rows the data loader encoded."""
    import numpy as np
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.model_store import load_keras_model
    from dlagent.ml.registry import get_champion
    from dlagent.ml.serving import load_bundle

    options = {k: conf[k] for k in ("task", "label_column", "drop_columns", "missing", "max_samples")}
    splits = load_dataset_with_options(conf["dataset"], options, seed=conf["seed"], allowed_roots=[env["DLAGENT_HOME"]])
    assert splits.encoding.vocabularies == {"band": ["high", "low", "mid"]} and splits.encoding.indicators == ["band", "day"]
    assert splits.encoding.dates == {"day": False}  # calendar columns, served from the raw ISO date
    assert any(row[10] is None for row in splits.raw_x_test) and any(row[3] is None for row in splits.raw_x_test)
    assert any(row[11] is None for row in splits.raw_x_test) and any(isinstance(row[11], str) for row in splits.raw_x_test)
    bundle = load_bundle(Path(env["DLAGENT_HOME"]) / "deploy")
    assert bundle.encoding == splits.encoding and bundle.encoding.dropped == ["id"]
    keras_model = load_keras_model(registry, "models:/" + get_champion(registry, "e2e-regressor")["model_id"])
    served, keras = bundle.predict(splits.raw_x_test), keras_model.predict(splits.x_test, verbose=0)
    assert np.isfinite(served).all()
    assert np.abs(served - keras).max() <= 0.05 * np.abs(keras).max()  # dynamic-range int8 weights, float activations


@pytest.mark.postgres
def test_a_regression_pipeline_on_postgresql_gated_on_rmse_with_the_agent_off(tmp_path, postgres_databases):
    """The Airflow metadata DB, the MLflow store and the study in PostgreSQL, a regression task judged
    by rmse, and ``agent_policy: off`` (the plan's warm_start and controller sections are null: a null
    section must not fail its consumers). The tuned model ships (no champion yet). The table has a
    categorical column and empty cells (``missing: impute``): the deployed bundle scores raw rows like
    the Keras model. The run streams the table (``cache: stream``). A worse model refused against the
    champion, through the whole DAG, is the live retrain's test (tests/e2e/test_live_stack.py); the
    gate's "better on rmse ships" rule is tests/ml/test_metrics.py's."""
    import optuna

    airflow_db, mlflow_db, optuna_db = postgres_databases(), postgres_databases(), postgres_databases()
    env = _stack(tmp_path, airflow_db=airflow_db, mlflow_uri=mlflow_db, optuna_url=optuna_db)
    regression = {"dataset": _regression_csv(tmp_path / "home" / "data"), "task": "regression", "label_column": "y",
                  "drop_columns": "id", "missing": "impute", "seed": 3, "model_name": "e2e-regressor", "agent_policy": "off", "compression_candidates": [{"quantization": "dynamic"}]}
    tuned = {**TINY_CONF, **regression, "epochs": 30, "max_metric_drop_points": 5.0, "cache": "stream"}  # every task streams the table
    registry = MlflowClient(mlflow_db, registry_uri=mlflow_db)
    result = _dags_test(env, tuned)
    assert result.returncode == 0 and "DagRun failed" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    runs = _pipeline_runs(mlflow_db)
    parent = runs["parent"]
    assert parent.info.status == "FINISHED" and runs["train"].info.status == "FINISHED"
    assert parent.data.tags["dlagent.metric"] == "rmse"
    for task in ("train", "evaluate"):  # cache 'stream': the tasks read the table from a scratch file, not an array
        assert json.loads(runs[task].inputs.dataset_inputs[0].dataset.profile)["streamed"] is True, task
    assert parent.data.metrics["test_metric"] == pytest.approx(runs["evaluate"].data.metrics["shipped_test_rmse"])
    assert parent.data.metrics["keras_test_metric"] == pytest.approx(runs["evaluate"].data.metrics["keras_test_rmse"])
    assert parent.data.params["data.task"] == "regression" and parent.data.params["data.label_column"] == "y"  # a follow-up reads them
    assert parent.data.params["data.drop_columns"] == "id"
    assert runs["train"].data.params["task"] == "regression" and "best_val_rmse" in runs["train"].data.metrics
    assert runs["evaluate"].data.metrics["keras_test_r2"] > 0.3  # a 10-feature nonlinear target: the mean gives 0
    assert "agent_plan" not in runs  # off: no agent run, the Params run as given
    assert "dlagent.warm_start" not in runs["train"].data.tags  # trained from scratch, as the null plan says
    assert "no champion" in runs["evaluate"].data.tags["dlagent.gate.reasons"]
    assert parent.data.tags["dlagent.deploy"] == "deployed e2e-regressor version 1"
    encoding = json.loads(Path(client_artifact(mlflow_db, runs["train"].info.run_id, "encoding.json")).read_text())
    assert encoding["vocabularies"] == {"band": ["high", "low", "mid"]} and encoding["dates"] == {"day": False}  # logged with the training run
    _assert_bundle_scores_raw_rows_like_the_keras_model(env, registry, tuned)
    (name,) = optuna.get_all_study_names(optuna_db)
    study = optuna.load_study(study_name=name, storage=optuna_db)
    assert study.direction.name == "MINIMIZE" and study.user_attrs["dlagent.settings"]["metric"] == "val_rmse"
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == TINY_CONF["n_trials"]  # both workers shared the PostgreSQL study, exactly n_trials
    for key, value in study.best_params.items():  # the Params plus the best trial's, nothing from a plan
        logged = runs["train"].data.params[key]
        assert (float(logged) == pytest.approx(value)) if isinstance(value, float) else logged == str(value), key
