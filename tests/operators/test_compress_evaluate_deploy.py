"""train -> compress (candidates) -> evaluate (gate) -> deploy / rollback, as operators on a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from dlagent.operators.compress import CompressionCandidatesOperator, CompressOperator
from dlagent.operators.deploy import DeployOperator, RollbackOperator
from dlagent.operators.evaluate import EvaluateOperator
from dlagent.operators.train import TrainOperator
from mlflow import MlflowClient

from tests.conftest import PROJECT_DIR
from tests.operators.context import make_context

# Its module-scoped fixtures train models: all its tests on one pytest-xdist worker, so they train once.
pytestmark = pytest.mark.xdist_group("operators_compress_evaluate_deploy")

DATA = {"dataset": "digits", "data_options": {"max_samples": 400}, "seed": 0}
NAME = "test-classifier"
CANDIDATES = [{"quantization": "dynamic"}, {"quantization": "int8"}, {"sparsity": 0.8, "quantization": "int8", "fine_tune_epochs": 2}]


def _train(run_id: str, **config) -> dict:
    train_config = {"model": "mlp", "epochs": 8, "units": 64, "seed": 0, **config}
    return TrainOperator(task_id="train", dataset="digits", data_options=DATA["data_options"], train_config=train_config,
                         experiment_name="exp").execute(make_context("train", run_id=run_id))


def _compress(model_uri: str, run_id: str, candidates=CANDIDATES) -> list[dict]:
    validated = CompressionCandidatesOperator(task_id="compression_candidates", candidates=candidates, seed=0,
                                              experiment_name="exp").execute(make_context("compression_candidates", run_id=run_id))
    return [
        CompressOperator(task_id="compress", model_uri=model_uri, compression=config, latency_runs=20, experiment_name="exp", **DATA)
        .execute(make_context("compress", run_id=run_id, map_index=index))
        for index, config in enumerate(validated)
    ]


def _evaluate(model_uri: str, candidates: list, run_id: str, **kwargs) -> dict:
    return EvaluateOperator(task_id="evaluate", model_uri=model_uri, candidates=candidates, model_name=NAME, latency_runs=20,
                            experiment_name="exp", **DATA, **kwargs).execute(make_context("evaluate", run_id=run_id))


def _deploy(evaluation: dict, run_id: str, deploy_dir: Path) -> dict:
    return DeployOperator(task_id="deploy", evaluation=evaluation, model_name=NAME, deploy_dir=str(deploy_dir),
                          experiment_name="exp").execute(make_context("deploy", run_id=run_id))


def _client(uri: str):
    """What the operators' hook gives the ML core: a client whose registry is its tracking store."""
    return MlflowClient(uri, registry_uri=uri)


def _versions(uri: str) -> list:
    client = _client(uri)
    try:
        return client.search_model_versions(f"name = '{NAME}'")
    except Exception:  # noqa: BLE001 - no registered model yet
        return []


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory):
    """One real store through the whole flow: trained model, three candidates, evaluated, deployed."""
    folder = tmp_path_factory.mktemp("deploy-flow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("DLAGENT_ARTIFACT_ROOT", str(folder / "artifacts"))
    trained = _train("run_1")
    candidates = _compress(trained["model_uri"], "run_1")
    evaluation = _evaluate(trained["model_uri"], candidates, "run_1")
    deployed = _deploy(evaluation, "run_1", folder / "deploy")
    yield {"uri": uri, "folder": folder, "trained": trained, "candidates": candidates, "evaluation": evaluation, "deployed": deployed}
    patch.undo()


def test_each_candidate_is_a_child_run_with_its_measurements(pipeline_store):
    from dlagent.ml.compression import measure_sparsity
    from dlagent.ml.data import load_dataset
    from dlagent.ml.model_store import load_keras_model, read_tflite
    from dlagent.ml.tflite import TFLiteModel

    uri, candidates = pipeline_store["uri"], pipeline_store["candidates"]
    assert [c["candidate"] for c in candidates] == ["dynamic", "int8", "pruned80+int8"]
    splits = load_dataset("digits", seed=0, max_samples=400)
    client = MlflowClient(uri)
    for candidate in candidates:
        run = client.get_run(candidate["run_id"])
        assert run.data.tags["dlagent.candidate"] == candidate["candidate"]
        assert run.info.status == "FINISHED"
        for key in ("size_bytes", "gzip_size_bytes", "test_accuracy", "latency_ms_p50", "latency_ms_p95"):
            assert run.data.metrics[key] == pytest.approx(candidate["metrics"][key])
        # the TFLite file stored with the logged model gives the accuracy the run reports
        accuracy = TFLiteModel(read_tflite(_client(uri), candidate["model_uri"])).accuracy(splits.x_test, splits.y_test)
        assert accuracy == pytest.approx(candidate["metrics"]["test_accuracy"])
    pruned = load_keras_model(_client(uri), candidates[2]["model_uri"])
    assert measure_sparsity(pruned) == pytest.approx(0.8, abs=0.01)
    assert candidates[2]["metrics"]["gzip_size_bytes"] < candidates[1]["metrics"]["gzip_size_bytes"]  # zeros compress


def test_evaluate_picks_the_most_compressed_candidate_within_budget_and_logs_the_gate(pipeline_store):
    evaluation, candidates = pipeline_store["evaluation"], pipeline_store["candidates"]
    reference = evaluation["reference"]["metrics"]["test_accuracy"]
    within = [c for c in candidates if (reference - c["metrics"]["test_accuracy"]) * 100 <= 1.0 + 1e-9]
    expected = min(within, key=lambda c: c["metrics"]["gzip_size_bytes"]) if within else None
    if expected is not None:
        assert evaluation["candidate"]["candidate"] == expected["candidate"]
        assert evaluation["blessed"] is True  # no champion yet
    client = MlflowClient(pipeline_store["uri"])
    run = client.get_run(evaluation["run_id"])
    assert run.data.tags["dlagent.gate.blessed"] == str(evaluation["blessed"]).lower()
    # the gate's limits and the shipped candidate's size and latency: the agent asks the gate's tie rule of the validation split
    assert json.loads(run.data.tags["dlagent.gate.thresholds"])["tie_tolerance_points"] == 0.5
    shipped = next(c for c in candidates if c["candidate"] == evaluation["candidate"]["candidate"])
    assert run.data.metrics["shipped_size_bytes"] == shipped["metrics"]["size_bytes"]
    assert run.data.metrics["shipped_latency_ms_p95"] == pytest.approx(evaluation["candidate"]["metrics"]["latency_ms_p95"])
    for key in ("keras_test_accuracy", "keras_macro_f1", "keras_class_0_recall", "keras_latency_ms_p95", "keras_predict_latency_ms_p50",
                "tflite_test_accuracy", "tflite_latency_ms_p50", "tflite_throughput_samples_per_s"):
        assert key in run.data.metrics, key
    files = {a.path for a in client.list_artifacts(evaluation["run_id"], "evaluation/keras")}
    assert {"evaluation/keras/confusion_matrix.png", "evaluation/keras/integrated_gradients.png"} <= files
    assert "evaluation/compression_candidates.png" in {a.path for a in client.list_artifacts(evaluation["run_id"], "evaluation")}
    decision = json.loads(Path(client.download_artifacts(evaluation["run_id"], "gate/decision.json")).read_text())
    assert decision["blessed"] == evaluation["blessed"] and decision["reasons"] == evaluation["reasons"]
    assert json.loads(run.data.tags["dlagent.gate.thresholds"]) == decision["thresholds"]
    assert len(json.dumps(evaluation)) < 8000  # XCom stays small
    # the floor every shipped model must clear: the most frequent training class, answered every time
    from dlagent.ml.data import load_dataset

    splits = load_dataset("digits", seed=0, max_samples=400)
    majority = np.bincount(splits.y_train).argmax()
    assert run.data.metrics["baseline_test_accuracy"] == pytest.approx(np.mean(splits.y_test == majority))
    assert evaluation["baseline_test_metric"] == run.data.metrics["baseline_test_accuracy"]
    assert next(c for c in decision["checks"] if c["check"] == "baseline")["passed"] is True


def test_a_model_that_always_answers_the_majority_class_is_not_deployed(pipeline_store, monkeypatch):
    """The first model of a name ships on the limits alone; one that never reads its inputs meets
    every limit (nothing to compress away, no champion) and is refused by the baseline check."""
    from dlagent.ml.data import load_dataset
    from dlagent.ml.model_store import load_keras_model, log_keras_model

    uri = pipeline_store["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    splits = load_dataset("digits", seed=0, max_samples=400)
    model = load_keras_model(_client(uri), pipeline_store["trained"]["model_uri"])
    kernel, bias = model.layers[-1].get_weights()
    bias = np.full_like(bias, -10.0)
    bias[np.bincount(splits.y_train).argmax()] = 10.0
    model.layers[-1].set_weights([np.zeros_like(kernel), bias])  # the same answer whatever the image
    client = MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name("exp").experiment_id)
    model_uri = log_keras_model(_client(uri), run.info.run_id, model, splits.x_test[:2], labels=splits.class_names)
    name = "constant-classifier"
    evaluation = EvaluateOperator(task_id="evaluate", model_uri=model_uri, candidates=[], model_name=name, latency_runs=5, explain=False,
                                  experiment_name="exp", **DATA).execute(make_context("evaluate", run_id="constant"))
    assert evaluation["blessed"] is False and evaluation["test_accuracy"] == evaluation["baseline_test_metric"]
    assert "most frequent class: +0.00 points" in evaluation["reasons"][0] and "class_weight 'balanced'" in evaluation["reasons"][0]
    with pytest.raises(AirflowSkipException, match="not deployed"):
        DeployOperator(task_id="deploy", evaluation=evaluation, model_name=name, deploy_dir=str(pipeline_store["folder"] / "const"),
                       experiment_name="exp").execute(make_context("deploy", run_id="constant"))
    assert not _client(uri).search_model_versions(f"name = '{name}'")
    # the person who wants it anyway says so
    shipped = EvaluateOperator(task_id="evaluate", model_uri=model_uri, candidates=[], model_name=name, latency_runs=5, explain=False,
                               thresholds={"min_gain_over_baseline_points": None}, experiment_name="exp",
                               **DATA).execute(make_context("evaluate", run_id="constant_anyway"))
    assert shipped["blessed"] is True


def test_deploy_registers_the_champion_with_its_tflite_and_writes_the_bundle(pipeline_store):
    from dlagent.ml.registry import get_champion

    deployed, uri = pipeline_store["deployed"], pipeline_store["uri"]
    champion = get_champion(_client(uri), NAME)
    assert champion["version"] == deployed["version"] == "1"
    assert champion["tflite_artifact"] == "tflite/model.tflite"
    bundle = Path(deployed["bundle"])
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["version"] == "1" and (bundle / "model.tflite").read_bytes()
    assert json.loads((bundle / "labels.json").read_text()) == [str(i) for i in range(10)]


def test_deploying_twice_for_one_dag_run_gives_one_version(pipeline_store):
    uri, deploy_dir = pipeline_store["uri"], pipeline_store["folder"] / "deploy"
    cleared = _deploy(pipeline_store["evaluation"], "run_1", deploy_dir)
    assert cleared == pipeline_store["deployed"]  # a cleared deploy returns its recorded result
    # A try that died after registering leaves its run unfinished: the next try deploys again, and
    # the registry's idempotency key (the DAG run) finds the version instead of making a second one.
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                                "tags.`airflow.task_id` = 'deploy' and tags.`airflow.run_id` = 'run_1'")
    client.set_terminated(run.info.run_id, status="FAILED")
    again = _deploy(pipeline_store["evaluation"], "run_1", deploy_dir)
    assert again["version"] == pipeline_store["deployed"]["version"] and again["created"] is False
    assert len(_versions(uri)) == 1


def test_the_gate_says_whether_the_champion_trained_on_this_runs_test_rows(pipeline_store, monkeypatch):
    """The deployed version records the data and seed it was judged on; a later gate on the same
    split knows the comparison is fair, one on another seed says the champion's score may be optimistic."""
    from dlagent.ml import mlflow_names as names
    from dlagent.ml.registry import get_champion

    uri = pipeline_store["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = pipeline_store["evaluation"]["data"]
    tags = get_champion(_client(uri), NAME)["tags"]
    assert data["seed"] == 0 and tags[names.DATA_DIGEST_TAG] == data["digest"] and tags[names.DATA_SEED_TAG] == "0"
    model_uri = pipeline_store["trained"]["model_uri"]
    same = _evaluate(model_uri, [], "run_same_split", explain=False)
    assert same["champion"]["split"] == "same" and not any(r.startswith("note:") for r in same["reasons"])
    other = EvaluateOperator(task_id="evaluate", model_uri=model_uri, candidates=[], model_name=NAME, latency_runs=20, explain=False,
                             experiment_name="exp", **{**DATA, "seed": 1}).execute(make_context("evaluate", run_id="run_other_seed"))
    assert other["champion"]["split"] == "other" and other["data"] == {"digest": data["digest"], "seed": 1}
    assert any(r.startswith("note: the champion was trained on a split of this data") and "optimistic" in r for r in other["reasons"])
    # Both are compared on the test rows the champion never trained on (seed 1's test rows outside seed 0's training split).
    from dlagent.ml.data import load_dataset
    from dlagent.ml.model_store import read_tflite
    from dlagent.ml.tflite import TFLiteModel

    theirs, ours = load_dataset("digits", seed=0, max_samples=400), load_dataset("digits", seed=1, max_samples=400)
    trained = {(tuple(np.round(x.ravel(), 6)), int(y)) for x, y in zip(theirs.x_train, theirs.y_train, strict=True)}
    unseen = np.array([(tuple(np.round(x.ravel(), 6)), int(y)) not in trained for x, y in zip(ours.x_test, ours.y_test, strict=True)])
    assert 0 < unseen.sum() < len(unseen) and other["champion"]["unseen_rows"] == int(unseen.sum())
    champion_tflite = TFLiteModel(read_tflite(_client(uri), pipeline_store["evaluation"]["candidate"]["model_uri"]))
    expected = float((champion_tflite.predict(ours.x_test[unseen]).argmax(axis=1) == ours.y_test[unseen]).mean())
    assert other["champion"]["metrics"]["test_accuracy"] == pytest.approx(expected)
    assert other["champion"]["metrics_on_all_test_rows"]["test_accuracy"] >= expected  # it trained on the others
    assert other["delta_vs_champion_points"] == pytest.approx(100 * (other["champion"]["candidate_on_unseen_rows"] - expected))
    # The agent's comparison likewise, on the validation rows the champion never trained on: the champion and this
    # run's model (here shipped = the Keras model) scored there, logged on the evaluate run for the observation.
    from dlagent.ml.model_store import load_keras_model
    from dlagent.ml.models import keras_predict

    unseen_val = np.array([(tuple(np.round(x.ravel(), 6)), int(y)) not in trained for x, y in zip(ours.x_val, ours.y_val, strict=True)])
    assert 30 <= unseen_val.sum() < len(unseen_val) and other["champion"]["val_on_unseen_rows"]["rows"] == int(unseen_val.sum())
    champion_val = float((champion_tflite.predict(ours.x_val[unseen_val]).argmax(axis=1) == ours.y_val[unseen_val]).mean())
    ours_val = float((keras_predict(load_keras_model(_client(uri), model_uri), ours.x_val[unseen_val]).argmax(axis=1)
                      == ours.y_val[unseen_val]).mean())
    assert other["champion"]["metrics"]["val_accuracy"] == pytest.approx(champion_val)
    assert other["champion"]["metrics_on_all_val_rows"]["val_accuracy"] >= champion_val
    logged = _client(uri).get_run(other["run_id"]).data.metrics
    assert logged["champion_val_accuracy"] == pytest.approx(champion_val)
    assert logged[f"{names.UNSEEN_BY_CHAMPION_PREFIX}val_accuracy"] == pytest.approx(ours_val)
    assert logged[f"{names.UNSEEN_BY_CHAMPION_PREFIX}shipped_val_accuracy"] == pytest.approx(ours_val)
    assert "validation rows it never trained on (what the agent compares)" in other["champion"]["split_detail"]
    assert f"{names.UNSEEN_BY_CHAMPION_PREFIX}val_accuracy" not in _client(uri).get_run(same["run_id"]).data.metrics
    # Fewer than 30 such validation rows: the whole split's score stays, and the note says whom that favours.
    few = np.zeros(len(ours.y_val), dtype=bool)
    few[:12] = True
    champion = {"metrics": {"val_accuracy": 0.5, "test_accuracy": 0.5}, "split_detail": "other"}
    EvaluateOperator(task_id="evaluate", model_uri=model_uri)._compare_on_unseen_validation_rows(
        champion, few, ours, ours, champion_tflite.predict, champion_tflite.predict, champion_tflite.predict)
    assert champion == {"metrics": {"val_accuracy": 0.5, "test_accuracy": 0.5}, "split_detail": "other; its validation score is on "
                        "the whole validation split (only 12 rows it never trained on, < 30): the agent's comparison favours it"}
    # The deploy step's own re-check compares the same way: the candidate's score on those rows, not on all.
    from dlagent.ml.registry import deploy_if_blessed

    candidate = pipeline_store["evaluation"]["candidate"]
    rechecked = deploy_if_blessed(_client(uri), NAME, candidate["model_uri"], candidate_metrics={**candidate["metrics"], "test_accuracy": 0.99},
                                  reference_metrics={"test_accuracy": 0.99}, champion_metrics={"test_accuracy": 0.95}, candidate_vs_champion=0.90,
                                  idempotency_key="test/recheck")
    assert rechecked["version"] is None and "worse than the champion by 5.00 points" in rechecked["decision"]["reasons"][0]
    assert "never trained on" in rechecked["decision"]["reasons"][0]
    runs = _client(uri).search_runs([_client(uri).get_experiment_by_name("exp").experiment_id],
                                    filter_string=f"tags.`{names.GATE_CHAMPION_SPLIT_TAG}` = 'other'")
    assert len(runs) == 1


def test_every_injected_regression_is_skipped_and_the_champion_stays(pipeline_store, monkeypatch):
    """Five worse models (real ones: the champion's weights with noise), one DAG run each: none ships."""
    from dlagent.ml.data import load_dataset
    from dlagent.ml.model_store import load_keras_model, log_keras_model
    from dlagent.ml.quantization import quantize
    from dlagent.ml.registry import get_champion
    from dlagent.ml.tflite import TFLiteModel

    uri = pipeline_store["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    champion_accuracy = pipeline_store["evaluation"]["test_accuracy"]
    splits = load_dataset("digits", seed=0, max_samples=400)
    client = MlflowClient(uri)
    rng = np.random.default_rng(0)
    injected = 0
    for scale in (0.3, 0.5, 0.8, 1.2, 2.0, 3.0):
        model = load_keras_model(_client(uri), pipeline_store["trained"]["model_uri"])
        model.set_weights([w + rng.normal(0, scale * (np.std(w) or 1.0), w.shape).astype(w.dtype) for w in model.get_weights()])
        content = quantize(model, "none")
        accuracy = TFLiteModel(content).accuracy(splits.x_test, splits.y_test)
        if (champion_accuracy - accuracy) * 100 <= 0.5:
            continue  # not a regression: skip it
        injected += 1
        run_id = f"regression_{injected}"
        run = client.create_run(client.get_experiment_by_name("exp").experiment_id)
        model_uri = log_keras_model(_client(uri), run.info.run_id, model, splits.x_test[:2], labels=splits.class_names, tflite_bytes=content)
        metrics = {"val_accuracy": TFLiteModel(content).accuracy(splits.x_val, splits.y_val), "test_accuracy": accuracy,
                   "size_bytes": len(content), "gzip_size_bytes": len(content), "latency_ms_p95": 0.01}
        evaluation = _evaluate(model_uri, [{"candidate": "float32", "model_uri": model_uri, "run_id": run.info.run_id,
                                            "metrics": metrics}], run_id, explain=False)
        assert evaluation["blessed"] is False and "worse than the champion" in " ".join(evaluation["reasons"])
        with pytest.raises(AirflowSkipException, match="not deployed"):
            _deploy(evaluation, run_id, pipeline_store["folder"] / "deploy")
        # a hand-edited blessing is caught by the deploy task's own gate re-check
        with pytest.raises(AirflowSkipException, match="re-check refused"):
            _deploy({**evaluation, "blessed": True}, run_id, pipeline_store["folder"] / "deploy")
    assert injected >= 5
    assert get_champion(_client(uri), NAME)["version"] == "1" and len(_versions(uri)) == 1


@pytest.mark.parametrize(
    ("candidates", "thresholds", "model_uri", "field"),
    [
        ([{"sparsity": 1.5}], None, None, "compression_candidates[0].sparsity"),
        ([{"sparsity": -0.1}], None, None, "compression_candidates[0].sparsity"),
        ([{"quantization": "int4"}], None, None, "compression_candidates[0].quantization"),
        ([{"quantization": "int8", "representative_samples": 0}], None, None, "compression_candidates[0].representative_samples"),
        (None, {"metric_threshold": "high"}, None, "metric_threshold"),
        (None, {"max_size_bytes": 1.5}, None, "max_size_bytes"),
        (None, None, "models:/m-00000000000000000000000000000000", "model_uri"),
    ],
)
def test_bad_input_is_refused_and_the_registry_is_untouched(pipeline_store, monkeypatch, candidates, thresholds, model_uri, field):
    from dlagent.ml.registry import get_champion

    uri = pipeline_store["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = sorted(v.version for v in _versions(uri))
    with pytest.raises(AirflowFailException, match="invalid input") as error:
        if candidates is not None:
            _compress(pipeline_store["trained"]["model_uri"], "bad_run", candidates)
        elif thresholds is not None:
            _evaluate(pipeline_store["trained"]["model_uri"], pipeline_store["candidates"], "bad_run", thresholds=thresholds)
        else:
            CompressOperator(task_id="compress", model_uri=model_uri, compression={"quantization": "int8"}, experiment_name="exp",
                             **DATA).execute(make_context("compress", run_id="bad_run"))
    assert field in str(error.value)
    assert sorted(v.version for v in _versions(uri)) == before and get_champion(_client(uri), NAME)["version"] == "1"


def test_a_candidate_measured_only_on_the_test_split_is_refused(pipeline_store, monkeypatch):
    """Candidates are chosen on validation scores: a result without val_accuracy cannot be judged."""
    from dlagent.ml.registry import get_champion

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pipeline_store["uri"])
    test_only = [{**c, "metrics": {k: v for k, v in c["metrics"].items() if not k.startswith("val_")}}
                 for c in pipeline_store["candidates"]]
    with pytest.raises(AirflowFailException, match=r"candidates\[0\]\.metrics: has no val_accuracy"):
        _evaluate(pipeline_store["trained"]["model_uri"], test_only, "test_only_run")
    assert get_champion(_client(pipeline_store["uri"]), NAME)["version"] == "1"


def test_rollback_by_cli_and_operator(pipeline_store, monkeypatch):
    from dlagent.ml.registry import get_champion, register_champion

    uri, folder = pipeline_store["uri"], pipeline_store["folder"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    deploy_dir = folder / "deploy"
    for key, candidate in (("manual/2", pipeline_store["candidates"][0]),):
        register_champion(_client(uri), candidate["model_uri"], NAME, idempotency_key=key, run_id=candidate["run_id"], metrics=candidate["metrics"])
    assert get_champion(_client(uri), NAME)["version"] == "2"
    moved = RollbackOperator(task_id="rollback", model_name=NAME, deploy_dir=str(deploy_dir),
                             experiment_name="exp").execute(make_context("rollback"))
    assert moved["champion"] == "1" and moved["rolled_back_from"] == "2"
    assert json.loads((deploy_dir / "current" / "metadata.json").read_text())["version"] == "1"

    third = pipeline_store["candidates"][1]
    register_champion(_client(uri), third["model_uri"], NAME, idempotency_key="manual/3", run_id=third["run_id"], metrics=third["metrics"])
    assert get_champion(_client(uri), NAME)["version"] == "3"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri, "DLAGENT_DEPLOY_DIR": str(folder / "deploy")}
    result = subprocess.run([sys.executable, "-m", "dlagent_dev.cli", "rollback", "--model-name", NAME], env=env, cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "champion is now version 1 (was 3)" in result.stdout
    assert get_champion(_client(uri), NAME)["version"] == "1"
    assert json.loads((folder / "deploy" / "current" / "metadata.json").read_text())["version"] == "1"

    # nothing further back: the operator refuses clearly and changes nothing
    with pytest.raises(AirflowFailException, match="model_name"):
        RollbackOperator(task_id="rollback", model_name=NAME, deploy_dir=str(folder / "deploy"),
                         experiment_name="exp").execute(make_context("rollback"))
    assert get_champion(_client(uri), NAME)["version"] == "1"
