"""The deployment gate: rules on measured metrics, and real injected regressions that must never
reach the registry."""

from __future__ import annotations

import os

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.gate import MAX_REGRESSION_POINTS, GateThresholds, decide

# Its module-scoped fixtures train models: all its tests on one pytest-xdist worker, so they train once.
pytestmark = pytest.mark.xdist_group("ml_gate")

CHAMPION = {"test_accuracy": 0.950, "size_bytes": 100_000, "latency_ms_p95": 1.0}
REFERENCE = {"test_accuracy": 0.955}
OPEN = GateThresholds(max_metric_drop_points=None)


def _candidate(accuracy, size=100_000, latency=1.0):
    return {"test_accuracy": accuracy, "size_bytes": size, "latency_ms_p95": latency}


# --------------------------------------------------------------------------- the rules


def test_first_model_ships_when_it_meets_the_limits():
    decision = decide(_candidate(0.9), REFERENCE, None, GateThresholds(metric_threshold=0.85, max_metric_drop_points=6))
    assert decision["blessed"] is True
    assert any("no champion" in reason for reason in decision["reasons"])


def test_a_first_model_no_better_than_the_trivial_predictor_is_refused_unless_the_check_is_off():
    """95 % of the test split is one class: answering it every time meets every limit."""
    imbalanced = {"test_accuracy": 0.95, "baseline_test_accuracy": 0.95}
    decision = decide(imbalanced, {"test_accuracy": 0.95}, None)
    assert decision["blessed"] is False and [c["check"] for c in decision["checks"] if not c["passed"]] == ["baseline"]
    assert "0.9500 against 0.9500 for always answering the training split's most frequent class: +0.00 points" in decision["reasons"][0]
    assert "metric 'f1_macro'" in decision["reasons"][0] and "min_gain_over_baseline_points null" in decision["reasons"][0]
    assert decide({**imbalanced, "test_accuracy": 0.96}, None, None, OPEN)["blessed"] is True  # one point better: it learned something
    assert decide(imbalanced, None, None, GateThresholds(max_metric_drop_points=None, min_gain_over_baseline_points=None))["blessed"]
    assert not decide({**imbalanced, "test_accuracy": 0.97}, None, None,
                      GateThresholds(max_metric_drop_points=None, min_gain_over_baseline_points=5.0))["blessed"]
    assert all(c["check"] != "baseline" for c in decide(_candidate(0.9), None, None, OPEN)["checks"])  # not measured: no check
    # an error metric's points are relative: an RMSE 2 % under the training mean's is 2 points better
    regressor = decide({"test_rmse": 9.8, "baseline_test_rmse": 10.0}, None, None, OPEN, "rmse")
    assert regressor["blessed"] and "+2.00 points" in " ".join(c["detail"] for c in regressor["checks"])
    worse = decide({"test_rmse": 10.5, "baseline_test_rmse": 10.0}, None, None, OPEN, "rmse")
    assert not worse["blessed"] and "always predicting the training split's mean target: -5.00 points" in worse["reasons"][0]


def test_better_than_champion_ships():
    decision = decide(_candidate(0.956), REFERENCE, CHAMPION, OPEN)
    assert decision["blessed"] and decision["delta_vs_champion_points"] == pytest.approx(0.6)
    assert any("better than the champion" in r for r in decision["reasons"])


def test_min_improvement_is_required_unless_smaller_or_faster():
    thresholds = GateThresholds(max_metric_drop_points=None, min_improvement_points=1.0)
    assert not decide(_candidate(0.955), REFERENCE, CHAMPION, thresholds)["blessed"]
    assert decide(_candidate(0.961), REFERENCE, CHAMPION, thresholds)["blessed"]
    assert decide(_candidate(0.955, size=50_000), REFERENCE, CHAMPION, thresholds)["blessed"]


def test_equal_accuracy_ships_only_when_smaller_or_faster():
    same = decide(_candidate(0.95), REFERENCE, CHAMPION, OPEN)
    assert not same["blessed"]
    assert "not at least 5% smaller or faster" in same["reasons"][0]
    assert decide(_candidate(0.95, size=60_000), REFERENCE, CHAMPION, OPEN)["blessed"]
    faster = decide(_candidate(0.95, latency=0.5), REFERENCE, CHAMPION, OPEN)
    assert faster["blessed"] and "faster" in faster["reasons"][-1]
    assert not decide(_candidate(0.95, size=99_000, latency=0.99), REFERENCE, CHAMPION, OPEN)["blessed"]  # within noise


def test_slightly_worse_but_much_smaller_ships_within_the_tie_tolerance():
    assert decide(_candidate(0.946, size=20_000), REFERENCE, CHAMPION, OPEN)["blessed"]  # -0.4 points
    strict = GateThresholds(max_metric_drop_points=None, tie_tolerance_points=0.0)
    assert not decide(_candidate(0.946, size=20_000), REFERENCE, CHAMPION, strict)["blessed"]


@pytest.mark.parametrize("accuracy", [0.9449, 0.94, 0.90, 0.5, 0.0])
def test_worse_than_champion_by_more_than_half_a_point_is_never_blessed(accuracy):
    generous = GateThresholds(metric_threshold=0.0, max_metric_drop_points=100.0, min_improvement_points=0.0,
                              tie_tolerance_points=MAX_REGRESSION_POINTS, min_efficiency_gain=0.0)
    decision = decide(_candidate(accuracy, size=1, latency=0.001), REFERENCE, CHAMPION, generous)
    assert decision["blessed"] is False
    assert any("never blessed" in reason for reason in decision["reasons"])


def test_limits_on_accuracy_drop_size_and_latency():
    thresholds = GateThresholds(metric_threshold=0.9, max_metric_drop_points=0.5, max_size_bytes=50_000, max_latency_ms_p95=0.5)
    decision = decide(_candidate(0.96, size=60_000, latency=0.7), {"test_accuracy": 0.97}, None, thresholds)
    assert decision["blessed"] is False
    failed = {c["check"] for c in decision["checks"] if not c["passed"]}
    assert failed == {"max_metric_drop_points", "max_size_bytes", "max_latency_ms_p95"}
    assert decision["metric_drop_points"] == pytest.approx(1.0)
    assert len(decision["reasons"]) == 3
    unmeasured = decide({"test_accuracy": 0.96}, None, None, GateThresholds(max_metric_drop_points=None, max_size_bytes=10))
    assert not unmeasured["blessed"] and "not measured" in unmeasured["reasons"][0]
    no_reference = decide(_candidate(0.96), None, None, GateThresholds(max_metric_drop_points=1.0))
    assert not no_reference["blessed"] and "no reference" in no_reference["reasons"][0]
    assert not decide(_candidate(0.89), None, None, GateThresholds(metric_threshold=0.9, max_metric_drop_points=None))["blessed"]


def test_a_failed_drop_check_on_a_split_too_small_for_its_limit_says_so():
    """68 test images: one is 1.47 points, more than the default 1-point limit, so one flipped image
    fails the check; the reason says that the split, not the model, is the problem."""
    limits = GateThresholds(max_metric_drop_points=1.0)
    coarse = decide(_candidate(0.9559), {"test_accuracy": 0.9706}, None, limits, test_samples=68)
    assert not coarse["blessed"]
    assert "one of the 68 test samples is 1.47 points, more than the limit" in coarse["reasons"][0]
    fine = decide(_candidate(0.9559), {"test_accuracy": 0.9706}, None, limits, test_samples=1000)  # one sample 0.1 points
    assert not fine["blessed"] and "test samples" not in fine["reasons"][0]
    passed = decide(_candidate(0.9706), {"test_accuracy": 0.9706}, None, limits, test_samples=68)
    assert passed["blessed"] and not any("test samples" in c["detail"] for c in passed["checks"])
    rmse = decide({"test_rmse": 1.2, "size_bytes": 1000}, {"test_rmse": 1.0}, None, limits, "rmse", test_samples=10)
    assert not rmse["blessed"] and "test samples" not in rmse["reasons"][0]  # an error's points are not per sample


@pytest.mark.parametrize(
    ("field", "value"),
    [("metric_threshold", "0.9"), ("metric_threshold", 1e13), ("metric_threshold", True), ("max_metric_drop_points", [1]),
     ("max_metric_drop_points", -1), ("max_size_bytes", 1.5e6), ("max_size_bytes", "1MB"), ("max_size_bytes", 0),
     ("max_latency_ms_p95", "fast"), ("max_latency_ms_p95", 0), ("min_improvement_points", None),
     ("min_improvement_points", float("nan")), ("tie_tolerance_points", 1.0), ("min_efficiency_gain", 1.0)],
)
def test_thresholds_of_wrong_type_or_range_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        GateThresholds(**{field: value})
    assert err.value.field == f"thresholds.{field}"
    with pytest.raises(ConfigError) as err:
        decide(_candidate(0.9), REFERENCE, None, {field: value})
    assert err.value.field == f"thresholds.{field}"


def test_threshold_dicts_refuse_unknown_keys_and_non_mappings():
    with pytest.raises(ConfigError) as err:
        GateThresholds.from_dict({"min_acc": 0.9})
    assert err.value.field == "thresholds.min_acc"
    with pytest.raises(ConfigError) as err:
        decide(_candidate(0.9), REFERENCE, None, [("metric_threshold", 0.9)])
    assert err.value.field == "thresholds"
    assert GateThresholds.from_dict(None) == GateThresholds()


@pytest.mark.parametrize(
    ("candidate", "field"),
    [({}, "candidate_metrics.test_accuracy"), ({"test_accuracy": "0.9"}, "candidate_metrics.test_accuracy"),
     ({"test_accuracy": 95.0}, "candidate_metrics.test_accuracy"), ({"test_accuracy": 0.9, "size_bytes": "big"}, "candidate_metrics.size_bytes")],
)
def test_bad_metrics_are_refused(candidate, field):
    with pytest.raises(ConfigError) as err:
        decide(candidate, None, None, OPEN)
    assert err.value.field == field


# --------------------------------------------------------------------------- injected regressions


@pytest.fixture(scope="module")
def trained(digits_small):
    from dlagent.ml.training import fit

    return fit(digits_small, TrainConfig(model="mlp", epochs=30, units=128, early_stopping_patience=0)).model


def _registry_state(client, name):
    versions = sorted((v.version, tuple(sorted(v.tags.items()))) for v in client.search_model_versions(f"name = '{name}'"))
    return versions, dict(client.get_registered_model(name).aliases)


def _noisy(model, scale, seed=0):
    from dlagent.ml.compression import copy_model

    rng = np.random.default_rng(seed)
    noisy = copy_model(model)
    noisy.set_weights([w + rng.normal(0, scale * (w.std() or 1.0), w.shape).astype(w.dtype) for w in model.get_weights()])
    return noisy


def test_every_injected_regression_is_rejected_and_nothing_is_deployed(trained, digits_small, mlflow_uri):
    from dlagent.ml.compression import CompressionConfig, compress, prune
    from dlagent.ml.model_store import log_keras_model
    from dlagent.ml.registry import deploy_if_blessed, register_champion
    from dlagent.ml.tracking import ensure_experiment
    from dlagent.ml.training import fit
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    run_id = client.create_run(ensure_experiment(client, "gate", os.environ["DLAGENT_ARTIFACT_ROOT"])).info.run_id
    name = "gate-digits"

    def deploy(candidate, label, thresholds, reference):
        uri = log_keras_model(client, run_id, candidate.keras_model, digits_small.x_test[:2], labels=digits_small.class_names,
                              tflite_bytes=candidate.tflite_bytes, name=label.replace(" ", "-").replace("%", "pct").replace(",", ""))
        return deploy_if_blessed(client, name, uri, candidate_metrics=candidate.metrics, reference_metrics=reference,
                                 thresholds=thresholds, idempotency_key=f"gate/{label}")

    # the deployed champion: the float32 TFLite conversion of a well-trained model
    champion = compress(trained, digits_small, CompressionConfig(quantization="none"), latency_runs=100)
    champion_uri = log_keras_model(client, run_id, trained, digits_small.x_test[:2], labels=digits_small.class_names,
                                   tflite_bytes=champion.tflite_bytes)
    register_champion(client, champion_uri, name, idempotency_key="gate/champion", metrics=champion.metrics)
    before = _registry_state(client, name)
    champion_accuracy = champion.metrics["test_accuracy"]
    assert champion_accuracy >= 0.85

    # a good candidate: the same model with int8 weights, as accurate and at least 2x smaller
    good = compress(trained, digits_small, CompressionConfig(quantization="dynamic"), latency_runs=100)
    assert abs(good.metrics["test_accuracy"] - champion_accuracy) * 100 <= 0.5
    assert good.metrics["size_bytes"] < 0.5 * champion.metrics["size_bytes"]
    limits = GateThresholds(max_metric_drop_points=2.0)

    shuffled = digits_small.__class__(**{**digits_small.__dict__, "y_train": np.random.default_rng(1).permutation(digits_small.y_train)})
    int8 = CompressionConfig(quantization="int8")
    regressions = {
        "noisy weights": compress(_noisy(trained, 1.5), digits_small, int8, latency_runs=50),
        "97% pruned, no fine-tune": compress(prune(trained, None, 0.97, fine_tune_epochs=0), digits_small, int8, latency_runs=50),
        "under-trained": compress(fit(digits_small, TrainConfig(model="mlp", epochs=1, units=8, learning_rate=1e-4)).model,
                                  digits_small, int8, latency_runs=50),
        "shuffled labels": compress(fit(shuffled, TrainConfig(model="mlp", epochs=3, units=16)).model, digits_small,
                                    CompressionConfig(quantization="dynamic"), latency_runs=50),
        "tiny student": compress(trained, digits_small, CompressionConfig(distill=True, student_model="mlp", student_units=2,
                                                                          distill_epochs=2), latency_runs=50),
    }
    cases = [(label, candidate, GateThresholds(max_metric_drop_points=100.0), "champion") for label, candidate in regressions.items()]
    cases += [
        ("over the size limit", good, GateThresholds(max_metric_drop_points=2.0, max_size_bytes=good.metrics["size_bytes"] - 1),
         "max_size_bytes"),
        ("over the latency limit", good, GateThresholds(max_metric_drop_points=2.0, max_latency_ms_p95=1e-4), "max_latency_ms_p95"),
    ]
    for label, candidate, thresholds, failing_check in cases:
        if failing_check == "champion":  # the injected fault really costs more than half a point
            assert (champion_accuracy - candidate.metrics["test_accuracy"]) * 100 > MAX_REGRESSION_POINTS, label
        outcome = deploy(candidate, label, thresholds, champion.metrics)
        decision = outcome["decision"]
        assert decision["blessed"] is False, (label, decision["reasons"])
        assert [c["check"] for c in decision["checks"] if not c["passed"]] == [failing_check], (label, decision["reasons"])
        assert outcome["version"] is None
        assert _registry_state(client, name) == before, f"{label} changed the registry"
    assert len(cases) == 7

    # the gate is not simply shut: the good candidate, within its limits, ships
    outcome = deploy(good, "good", limits, champion.metrics)
    assert outcome["decision"]["blessed"], outcome["decision"]["reasons"]
    assert "smaller" in outcome["decision"]["reasons"][-1]
    assert outcome["version"]["version"] == "2"
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": "2", "previous": "1"}


def test_the_gate_knows_whether_the_champion_trained_on_this_runs_test_rows():
    """The champion is measured on this run's test split: fair when its own run split the same data
    with the same seed; another seed or changed data may put its training rows there."""
    from dlagent.ml import mlflow_names as names
    from dlagent.ml.gate import champion_split

    tags = {names.DATA_DIGEST_TAG: "abc", names.DATA_SEED_TAG: "7"}
    assert champion_split(tags, "abc", 7)["split"] == "same"
    other_seed = champion_split(tags, "abc", 8)
    assert other_seed["split"] == "other" and "this data (digest abc) with seed 7" in other_seed["detail"]
    assert "optimistic" in other_seed["detail"]
    grown = champion_split(tags, "def", 7)
    assert grown["split"] == "other" and "other data (digest abc, seed 7)" in grown["detail"]
    assert champion_split({}, "abc", 7)["split"] == champion_split(None, "abc", 7)["split"] == "unknown"


def test_the_champion_comparison_uses_the_candidates_score_on_the_champions_rows_and_the_limits_the_whole_split():
    candidate, reference = {"test_accuracy": 0.95, "size_bytes": 1000}, {"test_accuracy": 0.955}
    champion = {"test_accuracy": 0.90, "size_bytes": 1000}  # measured on the rows it never trained on
    fair = decide(candidate, reference, champion, candidate_vs_champion=0.88)
    assert not fair["blessed"] and fair["delta_vs_champion_points"] == pytest.approx(-2.0)
    assert "0.8800 vs the champion's 0.9000, on the test rows the champion never trained on" in fair["reasons"][0]
    assert fair["metric_drop_points"] == pytest.approx(0.5)  # the limits read the whole split's score
    assert decide(candidate, reference, champion)["blessed"]  # on all rows: better by 5 points
    with pytest.raises(ConfigError, match="candidate_vs_champion.test_accuracy"):
        decide(candidate, reference, champion, candidate_vs_champion=88.0)
