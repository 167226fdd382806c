"""dl_agent_federated's shape: a group per round the form allows, each site's tasks mapped, the pipeline's tail."""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT_DIR


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_DIR / "dags" / "dl_agent_federated.py"))
    assert bag.import_errors == {}
    return bag.dags["dl_agent_federated"]


def test_there_is_a_round_group_for_every_round_the_form_allows(dag):
    from dlagent.ml.federated.settings import MAX_ROUNDS, FederatedConfig

    assert FederatedConfig.bounds("rounds").high == MAX_ROUNDS == dag.params.get_param("rounds").schema["maximum"]
    groups = sorted({t.task_id.split(".")[0] for t in dag.tasks if t.task_id.startswith("round_")})
    assert groups == [f"round_{n:02d}" for n in range(1, MAX_ROUNDS + 1)]


def test_rounds_chain_and_the_global_model_goes_through_the_pipeline_tail(dag):
    task = dag.get_task
    assert task("check_site").upstream_task_ids == {"validate"}
    assert task("setup").upstream_task_ids == {"check_site"}
    # each round expands over the assignments its previous task planned: round 1 the setup's,
    # round 2 round 1's aggregation (so it starts from round 1's global model)
    assert task("round_01.local").upstream_task_ids == {"setup"}
    assert task("round_02.local").upstream_task_ids == {"round_01.aggregate", "setup"}
    assert task("round_02.aggregate").upstream_task_ids == {"round_02.local", "round_01.aggregate", "setup"}
    assert not any(t.task_id.endswith(".plan") for t in dag.tasks)  # planning is no task of its own (one process less a round)
    assert task("round_01.aggregate").trigger_rule == "all_success"  # a stopped round skips it without running it
    aggregates = {t.task_id for t in dag.tasks if t.task_id.endswith(".aggregate")}
    assert aggregates <= task("finalize").upstream_task_ids and task("finalize").trigger_rule == "none_failed_min_one_success"
    assert task("compress").upstream_task_ids >= {"finalize", "compression_candidates"}
    assert task("deploy").upstream_task_ids == {"evaluate"}
    for site_task in ("check_site", "round_01.local"):
        assert type(task(site_task)).__name__ == "MappedOperator"  # one instance per site: dlagent.policy routes it by map index


def test_an_aggregation_is_serialized_as_a_task_that_skips_the_later_rounds(dag):
    """The aggregation that plans no next round skips every later round's tasks itself (SkipMixin; the run is
    tests/e2e/test_federated_dag.py). The scheduler honours its skip record on a cleared later round only when
    the serialized task says it can skip downstream."""
    from airflow.serialization.serialized_objects import DagSerialization
    from dlagent.ml.federated.settings import MAX_ROUNDS

    serialized = DagSerialization.to_dict(dag)["dag"]["tasks"]
    can_skip = {t["__var"]["task_id"] for t in serialized if t["__var"].get("_can_skip_downstream")}
    assert can_skip == {f"round_{n:02d}.aggregate" for n in range(1, MAX_ROUNDS + 1)}
