"""The cluster policy that routes a federated site's tasks to its own Celery queue (dlagent.policy)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dlagent.policy import site_queue, task_instance_mutation_hook

CONF = {"site_queues": ["site-a", "site-b", "site-c"]}


@pytest.mark.parametrize(("task_id", "map_index", "expected"), [
    ("check_site", 0, "site-a"),
    ("round_01.local", 2, "site-c"),
    ("round_17.local", 1, "site-b"),
    ("round_01.local", 3, None),  # no queue named for it
    ("round_01.local", -1, None),  # not a mapped instance
    ("round_01.aggregate", 0, None),  # the coordinator's tasks stay where they are
    ("setup", 0, None),
])
def test_a_site_task_goes_to_the_queue_of_its_map_index(task_id, map_index, expected):
    assert site_queue("dl_agent_federated", task_id, map_index, CONF) == expected


def test_other_dags_and_runs_without_queues_are_left_alone():
    assert site_queue("dl_agent_pipeline", "local", 0, CONF) is None
    assert site_queue("dl_agent_federated", "round_01.local", 0, {}) is None
    assert site_queue("dl_agent_federated", "round_01.local", 0, None) is None
    assert site_queue("dl_agent_federated", "round_01.local", 0, {"site_queues": "site-a"}) is None


def test_the_hook_sets_the_instance_queue_from_the_run_conf_and_nothing_else():
    ti = SimpleNamespace(dag_id="dl_agent_federated", task_id="round_02.local", map_index=1, queue="default")
    task_instance_mutation_hook(task_instance=ti, dag_run=SimpleNamespace(conf=CONF))
    assert ti.queue == "site-b"
    other = SimpleNamespace(dag_id="dl_agent_federated", task_id="round_02.aggregate", map_index=-1, queue="default")
    task_instance_mutation_hook(task_instance=other, dag_run=SimpleNamespace(conf=CONF))
    task_instance_mutation_hook(task_instance=ti, dag_run=None)
    assert (other.queue, ti.queue) == ("default", "site-b")


def test_airflow_loads_the_policy_from_the_installed_entry_point():
    """The entry point ``airflow.policy`` (pyproject.toml) is what Airflow's policy manager loads."""
    import pluggy
    from airflow import policies
    from airflow.settings import load_policy_plugins

    manager = pluggy.PluginManager(policies.local_settings_hookspec.project_name)
    manager.add_hookspecs(policies)
    load_policy_plugins(manager)
    implementations = [impl.plugin_name for impl in manager.hook.task_instance_mutation_hook.get_hookimpls()]
    assert "dlagent" in implementations
    ti = SimpleNamespace(dag_id="dl_agent_federated", task_id="check_site", map_index=0, queue="default")
    manager.hook.task_instance_mutation_hook(task_instance=ti, dag_run=SimpleNamespace(conf=CONF))
    assert ti.queue == "site-a"
