"""The plugin as Airflow loads it: links, the FastAPI app and views registered; cheap to import;
links serialized with the DAG; evaluated by the task runner and served by the api-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR

LINK_NAMES = {"MLflow run", "Tuning study", "Registered model", "Agent decisions"}


def test_airflow_loads_the_plugin_from_its_entry_point():
    from airflow import plugins_manager

    plugins, errors = plugins_manager._get_plugins()  # what every Airflow process does (cached)
    (plugin,) = [p for p in plugins if p.name == "dlagent"]
    assert "dlagent" in str(plugin.source) and "dlagent.plugin:DlagentPlugin" in str(plugin.source)
    failures = {source: error for source, error in errors.items() if "dlagent" in source}
    assert all("already registered" in error for error in failures.values()), failures  # see the next test

    assert {link.name for link in plugins_manager.get_operator_extra_links()} >= LINK_NAMES
    for link in plugin.operator_extra_links:
        assert link.operators == []  # never replaces, in the api-server, the URL the worker stored
    apps, _ = plugins_manager.get_fastapi_plugins()
    (app,) = [a for a in apps if a["url_prefix"] == "/dlagent"]
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    assert not any(app["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)
    routed, _ = plugins_manager._get_ui_plugins()  # views with a url_route, checked for clashes with other plugins
    assert ("dag_run", "dlagent/runs/{DAG_ID}/{RUN_ID}") in {(v["destination"], v["href"]) for v in routed}
    assert {(v["destination"], v["href"]) for v in plugin.external_views} == {
        ("nav", "dlagent/"), ("dag_run", "dlagent/runs/{DAG_ID}/{RUN_ID}")}


def test_only_one_installed_copy_of_the_plugin_is_on_the_path():
    """A second copy makes Airflow record a plugin import error ("already registered") in every process."""
    from airflow import plugins_manager  # noqa: F401 - puts the plugins folder on sys.path, as Airflow does
    from airflow._shared.module_loading import entry_points_with_dist

    sources = [str(getattr(dist, "_path", dist)) for entry_point, dist in entry_points_with_dist("airflow.plugins")
               if entry_point.name == "dlagent"]
    if len(sources) > 1 and any(source.endswith("plugins/dlagent.egg-info") for source in sources):
        pytest.xfail("plugins/dlagent.egg-info, left by `pip install -e .`, is on sys.path through the plugins folder, so "
                     "Airflow finds the dlagent entry point twice and reports 'already registered' as a plugin import "
                     "error; remove that folder after installing")
    assert len(sources) == 1, sources


def test_plugin_info_fits_the_api_servers_plugin_model():
    from airflow import plugins_manager
    from airflow.api_fastapi.core_api.datamodels.plugins import PluginResponse

    (info,) = [i for i in plugins_manager.get_plugin_info() if i["name"] == "dlagent"]
    response = PluginResponse.model_validate(info)  # what GET /api/v2/plugins returns
    assert len(response.operator_extra_links) == 4 and response.fastapi_apps[0].url_prefix == "/dlagent"


def test_importing_the_plugin_loads_nothing_heavy():
    """(How long the import takes is measured by bench/parse_time.py: a time limit here flakes on a loaded machine.)"""
    code = (
        "import sys; import airflow.plugins_manager; import dlagent.plugin; "
        "heavy = [m for m in ('mlflow', 'fastapi', 'tensorflow', 'keras', 'optuna', 'sklearn', 'dlagent.web.app', 'dlagent_dev') "
        "if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT_DIR)
    assert out.returncode == 0, out.stderr[-2000:]
    heavy = out.stdout.strip().splitlines()[-1]
    assert heavy == "[]", f"importing dlagent.plugin imported {heavy}"


def test_the_pipelines_tasks_carry_their_links_through_serialization():
    """What the DAG processor stores and the api-server reads back: ``{name: xcom_key}`` per task."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagBag(dag_folder=str(PROJECT_DIR / "dags")).dags["dl_agent_pipeline"]
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    expected = {
        "validate_inputs": {"MLflow run"}, "create_study": {"MLflow run", "Tuning study"},
        "tune": {"MLflow run", "Tuning study"},  # mapped
        "tune_summary": {"MLflow run", "Tuning study"}, "agent_plan": {"MLflow run", "Agent decisions"},
        "train": {"MLflow run"}, "compress": {"MLflow run"}, "evaluate": {"MLflow run"},
        "agent_decide": {"MLflow run", "Agent decisions"}, "deploy": {"MLflow run", "Registered model"},
        "finish": {"MLflow run"},
    }
    for task_id, names in expected.items():
        task = served.get_task(task_id)
        assert set(task.extra_links) == names, task_id
        assert {link.name: link.xcom_key for link in task.operator_extra_links}["MLflow run"] == "_link_MLflowRunLink"


@pytest.mark.slow
def test_airflow_evaluates_the_links_when_a_task_ends_and_the_api_server_serves_them(tmp_path):
    """A real ``dag.test()`` run (task runner, finalize) then ``GET .../taskInstances/{task}/links``."""
    dags = tmp_path / "dags"
    dags.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DLAGENT_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "DLAGENT_MLFLOW_UI_URL": "http://mlflow.example:5000",
    }
    env.pop("AIRFLOW_CONN_MLFLOW_DEFAULT", None)
    result = subprocess.run([sys.executable, "-m", "tests.plugin.links_roundtrip", str(dags)], env=env, cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=600)
    line = next((x for x in result.stdout.splitlines() if x.startswith("ROUNDTRIP ")), None)
    assert result.returncode == 0 and line, result.stdout[-3000:] + result.stderr[-3000:]
    links = json.loads(line[len("ROUNDTRIP "):])["links"]

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    expected = {"step": ("success", "FINISHED", "-1"), "failing_step": ("failed", "FAILED", "-1"),
                "mapped_step[0]": ("success", "FINISHED", "0"), "mapped_step[1]": ("success", "FINISHED", "1")}
    for key, (state, status, map_index) in expected.items():
        assert links[key]["state"] == state
        url = links[key]["extra_links"]["MLflow run"]
        assert url.startswith("http://mlflow.example:5000/#/experiments/")
        run = client.get_run(url.rsplit("/", 1)[1])
        assert run.data.tags["airflow.task_id"] == key.split("[")[0] and run.info.status == status
        assert run.data.tags["airflow.map_index"] == map_index  # each mapped instance links to its own run
        assert url.split("/")[-3] == run.info.experiment_id
    parents = {links[key]["extra_links"]["MLflow run"] for key in ("parent_only", "mapped_parent_only[0]", "mapped_parent_only[1]")}
    assert len(parents) == 1  # tasks without a child run link the DAG run's parent run
    assert client.get_run(parents.pop().rsplit("/", 1)[1]).data.tags["dlagent.kind"] == "pipeline"
    # evaluating the links of tasks that pushed no child run logs no "XCom not found" error
    assert "XCom not found" not in result.stdout + result.stderr
