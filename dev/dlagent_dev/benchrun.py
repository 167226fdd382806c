"""One default pipeline run for the benchmarks: ``dl_agent_pipeline`` through ``airflow dags
test``, as a user runs it, in a fresh home of its own (SQLite stores), and the figures its
parent MLflow run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def run_default_pipeline(conf: dict, workdir: Path, data_root: Path) -> dict:
    """Run the pipeline with ``conf`` (only what the data needs; everything else default) and
    return ``{"test_metric", "keras_test_metric", "metric", "candidate", "deploy", "seconds"}``
    of what it shipped. A failed run exits the benchmark with the log's tail."""
    from dlagent.ml import mlflow_names as names
    from mlflow import MlflowClient

    from dlagent_dev.env import setup, stack_env

    env = stack_env({**os.environ, "DLAGENT_HOME": str(workdir / "home")})
    env.update({"AIRFLOW_HOME": str(workdir / "airflow"), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{workdir / 'airflow.db'}",
                "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "DLAGENT_ARTIFACT_ROOT": str(workdir / "artifacts"),
                "DLAGENT_OPTUNA_STORAGE": f"sqlite:///{workdir / 'optuna.db'}", "DLAGENT_DEPLOY_DIR": str(workdir / "deploy"),
                "DLAGENT_DATA_ROOTS": str(data_root)})
    setup(env)
    experiment = conf.setdefault("experiment_name", "bench")
    airflow = str(Path(sys.executable).with_name("airflow"))
    started = time.perf_counter()
    out = subprocess.run([airflow, "dags", "test", "dl_agent_pipeline", "-c", json.dumps(conf)], capture_output=True, text=True,
                         cwd=PROJECT_DIR, env=env)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"airflow dags test failed:\n{out.stdout[-4000:]}\n{out.stderr[-2000:]}")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (parent,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                   names.tag_equals(names.KIND_TAG, names.KIND_PIPELINE))
    metrics, tags = parent.data.metrics, parent.data.tags
    return {"test_metric": metrics["test_metric"], "keras_test_metric": metrics.get("keras_test_metric"),
            "metric": tags.get("dlagent.metric"), "candidate": tags.get("dlagent.candidate"), "deploy": tags.get("dlagent.deploy"),
            "seconds": round(seconds, 1)}
