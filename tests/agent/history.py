"""A fixed MLflow history of one pipeline run, written straight into a real tracking store.

Parent run (the DAG run) with the training settings as params, six tuning trials (one failed,
one pruned; the best one with a learning curve that over-fits), a training run whose curve
is still improving, an evaluation blessed by the gate, three compression candidates, and a
champion registered under alias ``champion``.
"""

from __future__ import annotations

import time

from mlflow.entities import Metric

EXPERIMENT = "agent-history"
CHAMPION = "digits-champion"

TRIALS = [  # number, state, value, learning_rate, units, dropout
    (0, "COMPLETE", 0.900, 0.01, 64, 0.2),
    (1, "COMPLETE", 0.930, 0.003, 128, 0.1),
    (2, "FAIL", None, 0.5, 32, 0.0),
    (3, "COMPLETE", 0.950, 0.002, 128, 0.2),
    (4, "PRUNED", 0.700, 0.0001, 32, 0.3),
    (5, "COMPLETE", 0.945, 0.001, 256, 0.2),
]
BEST_TRIAL_CURVE = {  # over-fits: training accuracy far above validation accuracy
    "loss": [1.2, 0.6, 0.35, 0.2, 0.12, 0.08, 0.05, 0.03],
    "val_loss": [1.1, 0.7, 0.5, 0.42, 0.40, 0.41, 0.43, 0.45],
    "accuracy": [0.6, 0.85, 0.92, 0.96, 0.98, 0.99, 0.995, 0.999],
    "val_accuracy": [0.62, 0.80, 0.86, 0.89, 0.90, 0.90, 0.895, 0.89],
}
TRAIN_CURVE = {  # still improving at its last epoch
    "loss": [1.5, 0.9, 0.6, 0.45, 0.38],
    "val_loss": [1.4, 0.9, 0.65, 0.5, 0.44],
    "accuracy": [0.5, 0.75, 0.85, 0.88, 0.9],
    "val_accuracy": [0.52, 0.74, 0.83, 0.87, 0.89],
}
CANDIDATES = [  # name, sparsity, quantization, accuracy, size_bytes, latency_ms_p95
    ("float32", 0.0, "none", 0.952, 400_000, 0.30),
    ("int8", 0.0, "int8", 0.948, 110_000, 0.12),
    ("pruned80+int8", 0.8, "int8", 0.930, 40_000, 0.11),
]


def log_curve(client, run_id, curve, start_ms=1_700_000_000_000):
    metrics = [Metric(key, value, start_ms + step * 1000, step) for key, values in curve.items() for step, value in enumerate(values)]
    client.log_batch(run_id, metrics=metrics)


def child(client, experiment_id, parent_id, step, name, start_ms, *, tags=None, params=None, metrics=None, seconds=10.0, status="FINISHED"):
    step_tag = {"dlagent.step": step} if step else {}
    run = client.create_run(experiment_id, run_name=name, start_time=start_ms,
                            tags={"mlflow.parentRunId": parent_id, **step_tag, **(tags or {})})
    run_id = run.info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    if metrics:
        client.log_batch(run_id, metrics=[Metric(k, v, start_ms, 0) for k, v in metrics.items()])
    client.set_terminated(run_id, status=status, end_time=start_ms + int(seconds * 1000))
    return run_id


def build_history(client, *, with_champion: bool = True, experiment_name: str = EXPERIMENT, artifact_location: str | None = None) -> dict:
    """Write the history; return ``{"experiment_id", "parent_run_id", "best_trial_run_id", ...}``."""
    experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
    t0 = 1_700_000_000_000
    parent = client.create_run(experiment_id, run_name="dl_agent_pipeline manual__1", start_time=t0,
                               tags={"dlagent.kind": "pipeline"}).info.run_id
    for key, value in {"model": "mlp", "epochs": 10, "learning_rate": 0.001, "dropout": 0.2, "units": 128,
                       "early_stopping_patience": 3, "optimizer": "adam", "dataset": "digits"}.items():
        client.log_param(parent, key, value)
    client.log_metric(parent, "best_value", 0.95)  # the tuning summary (direction: maximize)
    ids = {"experiment_id": experiment_id, "parent_run_id": parent, "trials": {}}
    for i, (number, state, value, lr, units, dropout) in enumerate(TRIALS):
        # As dlagent.ml.tuning writes them: no dlagent.step tag, the whole config as params.
        metrics = {"epochs_run": 8.0}
        if value is not None:
            metrics["objective"] = value
        run_id = child(client, experiment_id, parent, None, f"trial-{number}", t0 + 1000 * (i + 1),
                       tags={"optuna.trial_number": str(number), "optuna.state": state, "optuna.study": "s"},
                       params={"model": "mlp", "epochs": 10, "seed": 42, "learning_rate": lr, "units": units, "dropout": dropout},
                       metrics=metrics, status="FAILED" if state == "FAIL" else "FINISHED")
        ids["trials"][number] = run_id
        if number == 3:
            log_curve(client, run_id, BEST_TRIAL_CURVE)
            ids["best_trial_run_id"] = run_id
    ids["train_run_id"] = child(client, experiment_id, parent, "train", "train", t0 + 20_000,
                                params={"learning_rate": 0.002, "units": 128, "dropout": 0.2, "epochs": 5},
                                metrics={"epochs_run": 5.0, "best_val_accuracy": 0.89}, seconds=30)
    log_curve(client, ids["train_run_id"], TRAIN_CURVE)
    ids["evaluate_run_id"] = child(client, experiment_id, parent, "evaluate", "evaluate", t0 + 60_000,
                                   tags={"dlagent.gate.blessed": "true"}, metrics={"val_accuracy": 0.95, "test_accuracy": 0.95, "test_loss": 0.2}, seconds=2)
    for j, (name, sparsity, quantization, accuracy, size, latency) in enumerate(CANDIDATES):
        child(client, experiment_id, parent, "compress", f"compress[{j}]", t0 + 70_000 + j,
              tags={"dlagent.candidate": name}, params={"sparsity": sparsity, "quantization": quantization},
              metrics={"val_accuracy": accuracy, "size_bytes": float(size), "latency_ms_p95": latency}, seconds=5)
    if with_champion:
        old = client.create_run(experiment_id, run_name="old champion", start_time=t0 - 10**7).info.run_id
        client.log_metric(old, "test_accuracy", 0.92)
        client.log_metric(old, "val_accuracy", 0.92)
        client.set_terminated(old)
        client.create_registered_model(CHAMPION)
        version = client.create_model_version(CHAMPION, source="/nonexistent/model", run_id=old,
                                              tags={"dlagent.metric.test_accuracy": "0.92", "dlagent.metric.val_accuracy": "0.92"})
        client.set_registered_model_alias(CHAMPION, "champion", version.version)
    time.sleep(0)  # nothing asynchronous: the store holds everything now
    return ids
