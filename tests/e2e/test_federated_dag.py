"""dl_agent_federated through real Airflow (`airflow dags test`): three sites, two or three rounds.

On SQLite, three sites each with its own data file: what leaves a site is checked in XCom and in
everything MLflow holds. On PostgreSQL (required on CI), one data set cut into label-skewed
shards, two sites drawn per round: each round's global weights are checked to be the
sample-weighted mean of the drawn sites' uploaded weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dlagent.ml.federated.settings import MAX_ROUNDS
from mlflow import MlflowClient

from tests.conftest import PROJECT_DIR
from tests.e2e.test_pipeline_dag import _stack

pytestmark = pytest.mark.slow

FEDERATED = {"model": "mlp", "units": 32, "learning_rate": 0.01, "rounds": 2, "local_epochs": 2, "seed": 1,
             "compression_candidates": [{"quantization": "dynamic"}], "max_metric_drop_points": 12.5, "experiment_name": "fed"}


def _dags_test(env: dict, conf: dict) -> subprocess.CompletedProcess:
    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run([airflow, "dags", "test", "dl_agent_federated", "-c", json.dumps(conf)],
                            env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "DagRun failed" not in result.stdout + result.stderr, result.stdout[-4000:] + result.stderr[-3000:]
    return result


def _runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(FEDERATED["experiment_name"])
    return client.search_runs([experiment.experiment_id], max_results=500)


def _by_step(runs, step: str) -> list:
    return [r for r in runs if r.data.tags.get("dlagent.step") == step]


def _weights(client: MlflowClient, run_id: str, tmp_path: Path) -> list:
    from dlagent.ml.federated.aggregate import load_weights

    return load_weights(client.download_artifacts(run_id, "federated/weights.npz", str(tmp_path)))


def _site_files(folder: Path) -> tuple[str, list[str], list[np.ndarray]]:
    """The digits split into a held-out file (the coordinator's) and three sites' files."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(order, 4)
    held_out = folder / "held-out.npz"
    np.savez(held_out, x=x[parts[0]].astype(np.float32), y=y[parts[0]])
    sites, rows = [], []
    for index, part in enumerate(parts[1:]):
        path = folder / f"site-{index}-private-rows.npz"
        np.savez(path, x=x[part].astype(np.float32), y=y[part])
        sites.append(f"npz:{path}")
        rows.append(x[part].astype(np.float32))
    return f"npz:{held_out}", sites, rows


def _query(airflow_db: str, sql: str) -> list:
    import sqlalchemy

    engine = sqlalchemy.create_engine(airflow_db)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(sql)).all()
    finally:
        engine.dispose()


def _xcom_values(airflow_db: str) -> list:
    rows = _query(airflow_db, "select task_id, key, value from xcom where dag_id = 'dl_agent_federated'")
    return [(task, key, value if isinstance(value, str) else json.dumps(value)) for task, key, value in rows]


def _longest_list(value) -> int:
    if isinstance(value, list):
        return max([len(value), *(_longest_list(v) for v in value)])
    if isinstance(value, dict):
        return max([0, *(_longest_list(v) for v in value.values())])
    return 0


def test_three_sites_with_their_own_files_train_and_deploy_and_no_row_or_path_leaves_a_site(tmp_path):
    airflow_db, mlflow_uri = f"sqlite:///{tmp_path / 'airflow.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _stack(tmp_path, airflow_db=airflow_db, mlflow_uri=mlflow_uri, optuna_url=f"sqlite:///{tmp_path / 'optuna.db'}")
    held_out, sites, site_rows = _site_files(tmp_path / "home" / "data")
    _dags_test(env, {**FEDERATED, "dataset": held_out, "site_datasets": sites})

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    runs = _runs(client)
    parent = next(r for r in runs if r.data.tags.get("dlagent.kind") == "pipeline")
    assert parent.info.status == "FINISHED" and parent.data.tags["dlagent.deploy"].startswith("deployed dlagent-classifier version 1")
    (final,) = _by_step(runs, "train")
    assert final.data.metrics["rounds_run"] == 2 and final.data.metrics["test_accuracy"] > 0.7  # 2 rounds x 2 epochs, 3 x ~310 rows
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "federated_val_accuracy")) == [1, 2]
    plans = [json.loads(Path(client.download_artifacts(parent.info.run_id, f"federated/round-00{n}/round_plan.json",
                                                       str(tmp_path / f"plan{n}"))).read_text()) for n in (1, 3)]
    assert plans[0]["action"] == "train" and plans[0]["reasons"] == ["first round: the Params' settings"]
    assert plans[1]["action"] == "stop" and plans[1]["reasons"] == ["all 2 rounds the Params ask for have run"]
    # round 2's aggregation planned no round 3 and skipped every later round's tasks itself, at once (not one round per scheduling loop)
    later = {f"round_{n:02d}.{task}" for n in range(3, MAX_ROUNDS + 1) for task in ("local", "aggregate")}
    (skipped,) = [json.loads(text)["skipped"] for task, key, text in _xcom_values(airflow_db)
                  if (task, key) == ("round_02.aggregate", "skipmixin_key")]
    assert set(skipped) == later
    states = _query(airflow_db, "select task_id, state from task_instance where dag_id = 'dl_agent_federated' and task_id like 'round_%'")
    assert {task for task, state in states if state == "skipped"} == later
    locals_ = _by_step(runs, "federated-local")
    assert sorted((r.data.tags["dlagent.federated.round"], r.data.tags["dlagent.federated.site"]) for r in locals_) == [
        (str(rnd), str(site)) for rnd in (1, 2) for site in range(3)]

    # What left the sites: XCom holds no path of a site's file and nothing as long as a row
    xcoms = _xcom_values(airflow_db)
    assert any(task == "round_02.aggregate" for task, _, _ in xcoms)
    for task, key, text in xcoms:
        assert "private-rows" not in text, (task, key, text[:300])
        assert _longest_list(json.loads(text)) < 64, (task, key, text[:300])  # a digits row has 64 values
    # ... and MLflow holds neither the paths (params, tags, metrics) nor the rows (any artifact file's bytes)
    for run in runs:
        assert "private-rows" not in json.dumps([run.data.params, run.data.tags]), run.info.run_name
    artifacts = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert len(artifacts) > 10
    for path in artifacts:
        blob = path.read_bytes()
        assert b"private-rows" not in blob, path
        for rows in site_rows:
            assert rows[:3].tobytes() not in blob and rows[:3].astype(np.float64).tobytes() not in blob, path


@pytest.mark.postgres
def test_label_skewed_shards_on_postgresql_average_exactly_the_drawn_sites_by_sample_count(tmp_path, postgres_databases):
    airflow_db, mlflow_db, optuna_db = postgres_databases(), postgres_databases(), postgres_databases()
    env = _stack(tmp_path, airflow_db=airflow_db, mlflow_uri=mlflow_db, optuna_url=optuna_db)
    _dags_test(env, {**FEDERATED, "dataset": "digits", "max_samples": 600, "n_shards": 3, "partition": "label_skew", "skew_alpha": 1.0,
                     "clients_per_round": 2, "strategy": "fedprox", "mu": 0.01})

    client = MlflowClient(mlflow_db, registry_uri=mlflow_db)
    runs = _runs(client)
    aggregates = {int(r.data.tags["dlagent.federated.round"]): r for r in _by_step(runs, "federated-aggregate")}
    assert sorted(aggregates) == [1, 2]
    for round_number, aggregate in aggregates.items():
        drawn = [r for r in _by_step(runs, "federated-local") if r.data.tags["dlagent.federated.round"] == str(round_number)]
        assert len(drawn) == 2  # clients_per_round
        counts = [int(r.data.metrics["samples"]) for r in drawn]
        updates = [_weights(client, r.info.run_id, tmp_path / f"r{round_number}-{r.info.run_id}") for r in drawn]
        averaged = _weights(client, aggregate.info.run_id, tmp_path / f"agg{round_number}")
        for layer, got in enumerate(averaged):
            expected = sum(u[layer].astype(np.float64) * c for u, c in zip(updates, counts, strict=True)) / sum(counts)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert aggregate.data.metrics["samples"] == sum(counts)
    (final,) = _by_step(runs, "train")
    assert final.data.params["federated.strategy"] == "fedprox" and final.data.params["federated.partition"] == "label_skew"

