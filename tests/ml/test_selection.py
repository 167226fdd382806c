"""One selection rule: the gate, the evaluate step and the rules policy agree on which candidate is
within the limits and which one ships; one default candidate list; one candidate-list check."""

from __future__ import annotations

import pytest
from dlagent.agent.observe import Observation
from dlagent.agent.policies.rules import RulesPolicy
from dlagent.errors import ConfigError
from dlagent.ml import selection
from dlagent.ml.gate import GateThresholds, decide
from dlagent.operators.evaluate import pick_candidate

REFERENCE = 0.95
CANDIDATES = {  # name: (accuracy, on validation and test alike here; gzip size)
    "dynamic": (0.950, 1000),
    "int8": (0.946, 700),  # 0.4 points lost, smaller: within a 1-point budget
    "pruned80+int8": (0.930, 300),  # 2 points lost: the smallest, but outside the budget
}


def _evaluate_results() -> list[dict]:
    """What the compress tasks return (and the evaluate step reads)."""
    return [{"candidate": name, "model_uri": f"models:/m-{name}", "metrics": {"val_accuracy": acc, "test_accuracy": acc, "gzip_size_bytes": size,
                                                                          "size_bytes": size * 2, "latency_ms_p95": 0.1}}
            for name, (acc, size) in CANDIDATES.items()]


def _observation() -> Observation:
    """What the agent reads back from MLflow after the same run."""
    return Observation(experiment_id="1", parent_run_id="p", resources={"cpus_free": 1, "cpu_count": 1},
                       evaluations=[{"run_id": "e", "metrics": {"val_accuracy": REFERENCE, "test_accuracy": REFERENCE}}],
                       candidates=[{"run_id": name, "name": name, "config": {"quantization": "int8"},
                                    "metrics": {"val_accuracy": acc, "test_accuracy": acc, "gzip_size_bytes": size}}
                                   for name, (acc, size) in CANDIDATES.items()])


@pytest.mark.parametrize(("budget", "expected"), [(1.0, "int8"), (3.0, "pruned80+int8"), (0.0, "dynamic")])
def test_the_evaluate_step_and_the_rules_policy_pick_the_same_candidate(budget, expected):
    limits = GateThresholds(max_metric_drop_points=budget)
    assert pick_candidate(_evaluate_results(), REFERENCE, limits)["candidate"] == expected
    plan = RulesPolicy(accuracy_budget_points=budget).decide(_observation())
    assert any(r["decision"] == f"compress: {expected}" for r in plan["reasons"]), plan["reasons"]
    # ... and the gate's limit check says the same of every candidate
    for result in _evaluate_results():
        gate = decide(result["metrics"], {"test_accuracy": REFERENCE}, None, limits)
        within = selection.within_limits(result["metrics"], REFERENCE, limits, split="test")
        assert gate["blessed"] is within, (result["candidate"], gate["reasons"])


def test_candidates_are_chosen_on_the_validation_split_never_on_the_test_split():
    """Test scores that would pick another candidate change nothing: the choice reads val_<metric>."""
    limits = GateThresholds(max_metric_drop_points=1.0)
    flipped = [{**r, "metrics": {**r["metrics"], "test_accuracy": 1.0 - r["metrics"]["test_accuracy"]}} for r in _evaluate_results()]
    assert pick_candidate(flipped, REFERENCE, limits)["candidate"] == pick_candidate(_evaluate_results(), REFERENCE, limits)["candidate"]
    without_val = [{**r, "metrics": {k: v for k, v in r["metrics"].items() if k != "val_accuracy"}} for r in _evaluate_results()]
    assert selection.select_candidate(without_val, REFERENCE, limits) == (None, [])  # a test score alone qualifies nothing
    with pytest.raises(ValueError):
        selection.metric_of({}, split="train")


def test_when_none_is_within_the_limits_the_step_judges_the_most_accurate_and_the_policy_plans_none():
    limits = GateThresholds(max_metric_drop_points=0.1, max_size_bytes=10)  # nothing is that small
    assert selection.select_candidate(_evaluate_results(), REFERENCE, limits) == (None, [])
    assert pick_candidate(_evaluate_results(), REFERENCE, limits)["candidate"] == "dynamic"  # the gate then says why not
    plan = RulesPolicy(accuracy_budget_points=0.0).decide({**_observation().to_dict(), "candidates": [
        {"run_id": "x", "name": "lossy", "config": {}, "metrics": {"val_accuracy": 0.5, "gzip_size_bytes": 1}}]})
    assert plan["compress"] == []


def test_one_default_candidate_list_for_the_operator_and_the_policy():
    from dlagent.operators.compress import CompressionCandidatesOperator

    from tests.operators.context import make_context

    defaults = CompressionCandidatesOperator(task_id="c", candidates=None, planned=None).execute(make_context("c"))
    assert [(c["quantization"], c["sparsity"]) for c in defaults] == [
        (c["quantization"], c.get("sparsity", 0.0)) for c in selection.DEFAULT_CANDIDATES]
    assert RulesPolicy().compress_candidates == selection.validate_candidates(selection.default_candidates())


@pytest.mark.parametrize(("value", "field"), [("x", "compression_candidates"), ([], "compression_candidates"),
                                              ([{"sparsity": 2}], "compression_candidates[0].sparsity"),
                                              ([{}, 3], "compression_candidates[1]"), ([{}] * 33, "compression_candidates")])
def test_one_candidate_list_check_names_the_entry(value, field):
    with pytest.raises(ConfigError) as error:
        selection.validate_candidates(value)
    assert error.value.field == field
