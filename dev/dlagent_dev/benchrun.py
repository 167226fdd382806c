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
    return ``{"test_metric", "keras_test_metric", "metric", "candidate", "deploy", "seconds",
    "epochs", "trials", "arm", "final", "parent_run_id", "experiment_id", "tracking_uri"}`` of what it shipped: ``epochs`` are
    every training epoch the run paid for (each tuning trial's and the final training's); ``arm`` the
    learning policy's arm in phase ``plan`` (the one the final training follows; ``None`` for other policies); ``final`` the final
    training's learning rate, epochs run and best validation score, so a benchmark can say what each run did.
    Runs in the same ``workdir`` share their stores (a learning policy's state among them); the
    newest pipeline run is read. A failed run exits the benchmark with the log's tail."""
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
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = client.search_runs([experiment_id], names.tag_equals(names.KIND_TAG, names.KIND_PIPELINE),
                                   order_by=["attributes.start_time DESC"], max_results=1)
    metrics, tags = parent.data.metrics, parent.data.tags
    children = client.search_runs([experiment_id], names.tag_equals(names.PARENT_TAG, parent.info.run_id))
    trained = [r for r in children if "optuna.trial_number" in r.data.tags or r.data.tags.get(names.STEP_TAG) == "train"]
    arms = [r.data.tags[names.ARM_TAG] for r in children if names.ARM_TAG in r.data.tags and r.data.tags.get(names.PHASE_TAG) == "plan"]
    final = next((r for r in trained if "optuna.trial_number" not in r.data.tags), None)
    return {"test_metric": metrics["test_metric"], "keras_test_metric": metrics.get("keras_test_metric"),
            "metric": tags.get("dlagent.metric"), "candidate": tags.get("dlagent.candidate"), "deploy": tags.get("dlagent.deploy"),
            "seconds": round(seconds, 1), "epochs": int(sum(r.data.metrics.get("epochs_run", 0) for r in trained)),
            "trials": sum("optuna.trial_number" in r.data.tags for r in trained), "arm": arms[0] if arms else None,
            "final": None if final is None else {"learning_rate": final.data.params.get("learning_rate"),
                                                 "epochs_run": final.data.metrics.get("epochs_run"),
                                                 "best_val": final.data.metrics.get(f"best_val_{tags.get('dlagent.metric')}")},
            "parent_run_id": parent.info.run_id,
            "experiment_id": experiment_id, "tracking_uri": env["MLFLOW_TRACKING_URI"]}


def child_figures(script, kind: str, options: dict) -> dict:
    """Run ``script --child KIND --key value ...`` in a fresh Python process (so its peak memory
    is its own) and return the JSON object its last line of output holds; exit naming the arm
    when it fails."""
    command = [sys.executable, str(script), "--child", kind]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{kind} {options} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired_arms(mine: list[dict], theirs: list[dict], names: tuple[str, str], rate: str) -> dict:
    """Two arms measured in pairs (the same seeds, in order): each arm's peak memory and ``rate``
    (mean and 95 % interval), and the interval of the per-pair ratio of ``rate``, ``mine`` over
    ``theirs``."""
    from dlagent_dev.stats import interval

    out = {}
    for name, rows in zip(names, (mine, theirs), strict=True):
        out[f"{name}_rss_mib"] = interval([r["peak_rss_mib"] for r in rows])
        out[f"{name}_{rate}"] = interval([r[rate] for r in rows])
    out["throughput_ratio"] = interval([a[rate] / b[rate] for a, b in zip(mine, theirs, strict=True)])
    return out


def mnist_outside_images(splits, folder: Path):
    """Every image of the MNIST IDX ``folder`` that is not in ``splits`` (a ``max_samples`` subset,
    matched on its pixels), with its label, read by the loader's own IDX reader: a held-out set
    about nine times larger than a 1,000-image subset's own test split."""
    import numpy as np
    from dlagent.ml.data_readers import _load_mnist_idx

    images, labels, _ = _load_mnist_idx(Path(folder))
    used = {np.asarray(x, np.float32).reshape(images.shape[1:]).tobytes() for part in (splits.x_train, splits.x_val, splits.x_test)
            for x in np.asarray(part)}
    keep = np.array([image.tobytes() not in used for image in images])
    if len(images) - keep.sum() != len(splits.y_train) + len(splits.y_val) + len(splits.y_test):
        raise RuntimeError("the subset's images were not all found in the MNIST set: the loader's scaling changed")
    return images[keep].reshape(-1, *splits.input_shape), labels[keep].astype(int)


def shipped_accuracy(run: dict, x, y) -> float:
    """Accuracy on ``x``, ``y`` of what pipeline ``run`` (:func:`run_default_pipeline`) shipped: the
    candidate its gate judged (``gate/decision.json`` of its evaluate run), a TFLite file, or the
    Keras model where no candidate was kept."""
    import numpy as np
    from dlagent.ml import mlflow_names as names
    from dlagent.ml.model_store import load_keras_model, read_tflite
    from dlagent.ml.models import keras_predict
    from dlagent.ml.tflite import TFLiteModel
    from mlflow import MlflowClient

    client = MlflowClient(run["tracking_uri"])
    (evaluate,) = client.search_runs([run["experiment_id"]], f"{names.tag_equals(names.PARENT_TAG, run['parent_run_id'])} and "
                                     f"{names.tag_equals(names.STEP_TAG, 'evaluate')}")
    decision = client.download_artifacts(evaluate.info.run_id, f"{names.GATE_DECISION_ARTIFACT}/{names.GATE_DECISION_FILE}")
    candidate = json.loads(Path(decision).read_text())["candidate"]
    if candidate["candidate"] == "keras":
        probabilities = keras_predict(load_keras_model(client, candidate["model_uri"]), x)
    else:
        probabilities = TFLiteModel(read_tflite(client, candidate["model_uri"]), num_threads=None).predict(x)
    return float((np.asarray(probabilities).argmax(1) == y).mean())
