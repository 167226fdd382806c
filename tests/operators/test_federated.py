"""The federated operators' refusals: bad settings, and updates a round must not average."""

from __future__ import annotations

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException
from dlagent.operators.federated import (
    ROUND_RESULT_KEY,
    FederatedAggregateOperator,
    FederatedLocalOperator,
    FederatedValidateOperator,
)

from tests.operators.context import make_context

ASSIGNMENTS = [{"round": 2, "sites": [0, 2], "site": site, "global_uri": "runs:/r/federated/weights.npz", "local_epochs": 1,
                "learning_rate": 0.01} for site in (0, 2)]


def _update(site: int, round_number: int = 2) -> dict:
    return {"round": round_number, "site": site, "weights_uri": f"runs:/s{site}/federated/weights.npz", "samples": 10,
            "metrics": {"train_loss": 1.0}}


@pytest.mark.parametrize(("updates", "message"), [
    ([_update(0), _update(2, round_number=1)], "sites [2] sent updates of another round than 2"),  # a stale update
    ([_update(0), _update(0)], "drew sites [0, 2] but got updates from [0, 0]"),  # one site twice
    ([_update(0)], "drew sites [0, 2] but got updates from [0]"),  # one missing
    ([_update(0), _update(1)], "drew sites [0, 2] but got updates from [0, 1]"),  # a site not drawn
])
def test_aggregate_refuses_any_update_set_but_one_per_drawn_site_of_this_round(updates, message):
    op = FederatedAggregateOperator(task_id="aggregate", updates=updates, round_plan=ASSIGNMENTS, federated={"n_shards": 3})
    with pytest.raises(AirflowFailException, match="updates") as err:
        op.execute(make_context("aggregate"))
    assert message in str(err.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"federated": {"n_shards": 1}}, "n_shards"),
    ({"federated": {"strategy": "fedprox", "mu": -1}}, "mu"),
    ({"federated": {"n_shards": 3, "clients_per_round": 5}}, "clients_per_round"),
    ({"site_datasets": ["npz:/a.npz", ""]}, "site_datasets[1]"),
    ({"site_datasets": ["npz:/a.npz", "ftp://elsewhere"]}, "site_datasets[1]"),
    ({"train_config": {"init_from": "models:/m@champion"}}, "init_from"),
    # the steps after the rounds: refused before the first one, not after every round has run
    ({"compression_candidates": [{"sparsity": 1.5}]}, "compression_candidates[0].sparsity"),
    ({"gate_thresholds": {"max_size_bytes": 1.5}}, "max_size_bytes"),
])
def test_bad_settings_fail_the_first_task_naming_the_field_before_any_data_is_read(kwargs, field):
    op = FederatedValidateOperator(task_id="validate", dataset="npz:/does/not/exist.npz", **kwargs)
    with pytest.raises(AirflowFailException, match="invalid input, nothing was run") as err:
        op.execute(make_context("validate"))
    assert f"{field}:" in str(err.value)


def test_a_site_its_round_did_not_draw_sends_nothing_and_a_site_out_of_range_is_refused():
    undrawn = FederatedLocalOperator(task_id="local", assignment={**ASSIGNMENTS[0], "site": 1}, federated={"n_shards": 3})
    assert undrawn.execute(make_context("local", map_index=1)) is None
    outside = FederatedLocalOperator(task_id="local", assignment={**ASSIGNMENTS[0], "site": 3}, federated={"n_shards": 3})
    with pytest.raises(AirflowFailException, match="assignment: site 3 is not one of the 3 sites"):
        outside.execute(make_context("local", map_index=3))


def test_an_unknown_agent_policy_fails_the_setup_before_a_model_is_built():
    from dlagent.operators.federated import FederatedSetupOperator

    op = FederatedSetupOperator(task_id="setup", policy="greedy", dataset="npz:/does/not/exist.npz", federated={"n_shards": 3})
    with pytest.raises(AirflowFailException, match="invalid input, nothing was run: agent_policy:"):
        op.execute(make_context("setup"))


@pytest.mark.parametrize(("x", "words"), [
    (np.random.default_rng(0).random((60, 8, 8)) * 255, "integer input cannot carry these images' raw values"),
    (np.random.default_rng(0).random((60, 5)), "integer input cannot carry a table's raw columns"),
])
def test_int8_io_on_a_model_that_standardises_raw_inputs_fails_the_first_task(tmp_path, monkeypatch, x, words):
    monkeypatch.setenv("DLAGENT_DATA_ROOTS", str(tmp_path))
    np.savez(tmp_path / "data.npz", x=x, y=np.repeat([0, 1, 2], 20))
    op = FederatedValidateOperator(task_id="validate", dataset=f"npz:{tmp_path / 'data.npz'}", federated={"n_shards": 2},
                                   compression_candidates=[{"quantization": "int8", "int8_io": True}])
    with pytest.raises(AirflowFailException, match=f"compression_candidates\\[0\\].int8_io: {words}"):
        op.execute(_context("validate"))


def test_a_percentage_as_the_accuracy_threshold_fails_the_first_task_not_the_gate_after_every_round():
    op = FederatedValidateOperator(task_id="validate", **{**KW, "gate_thresholds": {"metric_threshold": 90}})
    with pytest.raises(AirflowFailException, match="thresholds.metric_threshold: accuracy is a fraction in \\[0, 1\\], got 90"):
        op.execute(_context("validate"))


def test_site_queues_must_name_one_queue_per_site():
    op = FederatedValidateOperator(task_id="validate", site_queues=["a", "b"], federated={"n_shards": 3})
    with pytest.raises(AirflowFailException, match="site_queues: must name one Celery queue per site"):
        op.execute(make_context("validate"))


KW = {"dataset": "digits", "data_options": {"max_samples": 300}, "experiment_name": "fed",
      "train_config": {"model": "mlp", "units": 16, "learning_rate": 0.01, "seed": 1},
      "federated": {"n_shards": 3, "rounds": 2, "local_epochs": 1, "seed": 1}}
DAG, RUN = "dl_agent_federated", "manual__1"


def _context(task_id: str, map_index: int = -1) -> dict:
    return make_context(task_id, dag_id=DAG, run_id=RUN, map_index=map_index)


def _execute(operator, map_index: int = -1):
    """``operator.execute`` as its task instance runs it: its return value and the XComs it pushed."""
    context = _context(operator.task_id, map_index)
    return operator.execute(context), context["ti"].xcoms


def _round(number: int, assignments: list, previous: dict, model_uri: str) -> dict:
    """One round as the DAG wires it: one local task per site over the assignments the task
    before planned, then the aggregation, which plans the next round."""
    task = f"round_{number:02d}"
    updates = [_execute(FederatedLocalOperator(task_id=f"{task}.local", assignment=a, model_uri=model_uri, **KW), a["site"])[0]
               for a in assignments]
    aggregate = FederatedAggregateOperator(task_id=f"{task}.aggregate", updates=updates, round_plan=assignments, previous=previous,
                                           model_uri=model_uri, **KW)
    planned, pushed = _execute(aggregate)
    return {"updates": updates, "record": pushed[ROUND_RESULT_KEY], "next": planned}


def test_a_run_restarted_after_a_crash_between_rounds_resumes_from_the_last_global_model(mlflow_uri):
    """The same DAG run started again after its process died between rounds (every task cleared,
    as Airflow re-runs them): setup and round 1 return their recorded results and XComs (nothing
    trained, averaged or planned again), and round 2 starts from round 1's global weights."""
    from dlagent.operators.federated import FederatedSetupOperator
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)

    def finished_at() -> dict:  # a step computed again would end its run again
        runs = client.search_runs([client.get_experiment_by_name("fed").experiment_id], max_results=100)
        return {r.info.run_id: r.info.end_time for r in runs if r.data.tags.get("dlagent.step", "").startswith("federated")}

    setup = _execute(FederatedSetupOperator(task_id="setup", **KW))
    first_plan, setup_xcoms = setup
    assert [a["site"] for a in first_plan] == [0, 1, 2] and {a["round"] for a in first_plan} == {1}
    model_uri = setup_xcoms["model_uri"]
    before_crash = _round(1, first_plan, setup_xcoms[ROUND_RESULT_KEY], model_uri)
    ended = finished_at()
    assert len(ended) == 5  # setup, 3 sites, the aggregation
    # -- the crash: the process is gone; a restarted run re-runs every task of the same DAG run
    assert _execute(FederatedSetupOperator(task_id="setup", **KW)) == setup  # the plan and both XComs, recorded
    round_one = _round(1, first_plan, setup_xcoms[ROUND_RESULT_KEY], model_uri)
    assert round_one == before_crash
    assert finished_at() == ended  # recorded results returned: nothing of round 1 trained or averaged again
    assert {a["global_uri"] for a in round_one["next"]} == {before_crash["record"]["global_uri"]}
    round_two = _round(2, round_one["next"], round_one["record"], model_uri)
    assert [r["round"] for r in round_two["record"]["history"]] == [1, 2]
    assert round_two["next"] == []  # rounds: 2, so round 3 (and every later one) is skipped

    runs = client.search_runs([client.get_experiment_by_name("fed").experiment_id], max_results=100)
    steps = sorted(r.data.tags.get("dlagent.step", "") for r in runs)
    assert steps.count("federated-local") == 6 and steps.count("federated-aggregate") == 2 and steps.count("federated-setup") == 1


def _site_csv(path, *, colours, classes, rows=40):
    lines = ["size,colour,label"] + [f"{i % 7 + 0.5},{colours[i % len(colours)]},{classes[i % len(classes)]}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return f"csv:{path}"


@pytest.mark.parametrize(
    ("site_colours", "site_classes", "words"),
    [(["red", "blue"], ["cat", "dog", "emu"], None),  # the same values: accepted
     (["red", "green"], ["cat", "dog", "emu"], "categorical columns hold other values"),
     (["red", "blue"], ["dog", "emu", "fox"], "class names are not the held-out data set's")],
)
def test_a_site_file_whose_classes_or_categories_mean_other_things_is_refused(tmp_path, monkeypatch, site_colours, site_classes, words):
    """Each CSV numbers its class names and one-hots its categories by its own values: a site whose
    values differ from the coordinator's would feed the model inputs and labels that mean other
    things, with the same shapes. ``check_site`` refuses it before any training."""
    from dlagent.errors import ConfigError
    from dlagent.operators.federated.setup import FederatedSiteCheckOperator

    monkeypatch.setenv("DLAGENT_DATA_ROOTS", str(tmp_path))
    coordinator = _site_csv(tmp_path / "coordinator.csv", colours=["red", "blue"], classes=["cat", "dog", "emu"])
    site = _site_csv(tmp_path / "site.csv", colours=site_colours, classes=site_classes)
    kwargs = {**KW, "dataset": coordinator, "site_datasets": [coordinator, site], "data_options": {},
              "federated": {"rounds": 1, "local_epochs": 1, "seed": 1}}
    context = _context("validate")
    FederatedValidateOperator(task_id="validate", **kwargs).execute(context)
    data = context["ti"].xcoms["data"]
    assert data["digests"]["class_names"] and data["digests"]["encoding"]
    check = FederatedSiteCheckOperator(task_id="check_site", site=1, data=data, **kwargs)
    if words is None:
        assert check.execute(_context("check_site", map_index=1))["samples"] > 0
        return
    with pytest.raises(AirflowFailException) as refused:
        check.execute(_context("check_site", map_index=1))
    assert words in str(refused.value) and "site_datasets[1]" in str(refused.value)
    assert isinstance(refused.value.__cause__, ConfigError)
