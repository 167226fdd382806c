"""dl_agent_retrain: its schedule (weekly or on new data) and the conf it builds for the pipeline.

A real asset-triggered run through the scheduler is in tests/e2e/test_live_stack.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from tests.conftest import PROJECT_DIR
from tests.operators.context import make_context


@pytest.fixture(scope="module")
def retrain_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_DIR / "dags" / "dl_agent_retrain.py"))
    assert bag.import_errors == {}
    return bag.dags["dl_agent_retrain"]


def test_runs_weekly_or_when_the_training_data_asset_is_updated(retrain_dag):
    from airflow.sdk import AssetOrTimeSchedule

    schedule = retrain_dag.schedule
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert [asset.name for asset in schedule.asset_condition.objects] == ["dlagent_training_data"]
    assert schedule.timetable.expression == "0 3 * * 1"  # unless DLAGENT_RETRAIN_CRON says otherwise (below)
    assert [t.task_id for t in retrain_dag.topological_sort()] == ["retrain_conf", "trigger_pipeline", "finish"]
    trigger = retrain_dag.get_task("trigger_pipeline")
    assert trigger.trigger_dag_id == "dl_agent_pipeline" and trigger.wait_for_completion and trigger.deferrable
    # The trigger form is the pipeline's: every Param is passed on.
    from dlagent.params import pipeline_params

    assert set(retrain_dag.params) == set(pipeline_params())
    assert set(retrain_dag.get_task("retrain_conf").settings) == set(pipeline_params())


def _parse_retrain_dag(monkeypatch, cron: str):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("DLAGENT_RETRAIN_CRON", cron)
    return DagBag(dag_folder=str(PROJECT_DIR / "dags" / "dl_agent_retrain.py"))


def test_the_deployment_sets_the_retrain_clock_or_turns_it_off(monkeypatch):
    from airflow.sdk import AssetOrTimeSchedule

    dag = _parse_retrain_dag(monkeypatch, "30 2 * * *").dags["dl_agent_retrain"]
    assert isinstance(dag.schedule, AssetOrTimeSchedule) and dag.schedule.timetable.expression == "30 2 * * *"
    assert "again **on the cron `30 2 * * *` (UTC)** and **whenever" in dag.doc_md  # the UI's doc says the clock in use
    for off in ("off", " None "):
        bag = _parse_retrain_dag(monkeypatch, off)
        assert bag.import_errors == {}
        timetable = bag.dags["dl_agent_retrain"].timetable  # new data only: an asset-triggered timetable, no clock
        assert type(timetable).__name__ == "AssetTriggeredTimetable", type(timetable)
        assert [asset.name for asset in timetable.asset_condition.objects] == ["dlagent_training_data"]
        assert "again **whenever the Asset" in bag.dags["dl_agent_retrain"].doc_md


@pytest.mark.parametrize("cron", ["every monday", "0 3 * * 1 0"])  # croniter takes six fields; Airflow five
def test_a_bad_retrain_clock_is_an_import_error_naming_the_variable_and_the_fix(monkeypatch, cron):
    (error,) = _parse_retrain_dag(monkeypatch, cron).import_errors.values()
    assert f"DLAGENT_RETRAIN_CRON: {cron!r} is not a cron expression" in error and '"off"' in error, error


def _event(extra: dict, minute: int):
    return SimpleNamespace(extra=extra, timestamp=datetime(2026, 11, 23, 3, minute, tzinfo=UTC))


def _run(settings: dict, events: list | None = None):
    from airflow.sdk import Asset
    from dlagent.operators.retrain import RetrainConfOperator

    operator = RetrainConfOperator(task_id="retrain_conf", settings=settings)
    context = make_context("retrain_conf", dag_id="dl_agent_retrain")
    if events is not None:
        context["triggering_asset_events"] = {Asset(name="dlagent_training_data", uri="dlagent://training-data"): events}
    return operator.execute(context)


def test_scheduled_run_retrains_with_the_params():
    assert _run({"dataset": "digits", "epochs": 5, "max_samples": None}) == {"dataset": "digits", "epochs": 5}


def test_new_data_event_updates_the_conf_latest_event_wins():
    events = [_event({"conf": {"dataset": "npz:/data/b.npz", "epochs": 7}}, 30),
              _event({"conf": {"dataset": "npz:/data/a.npz"}, "source": "ingest"}, 10),
              _event({"rows": 123}, 40)]  # an event without conf changes nothing
    conf = _run({"dataset": "digits", "epochs": 5}, events)
    assert conf == {"dataset": "npz:/data/b.npz", "epochs": 7}


@pytest.mark.parametrize("extra, field", [
    ({"conf": {"epoch": 3}}, "extra.conf (dlagent://training-data/).epoch"),
    ({"conf": {"epochs": 0}}, "extra.conf (dlagent://training-data/).epochs"),
    ({"conf": ["digits"]}, "extra.conf (dlagent://training-data/)"),
])
def test_bad_event_conf_fails_naming_the_field_before_anything_is_triggered(extra, field):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="invalid input") as failed:
        _run({"dataset": "digits"}, [_event(extra, 0)])
    assert field in str(failed.value) and "Fix:" in str(failed.value)


def test_bad_setting_is_refused():
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=r"conf\.batch_size"):
        _run({"dataset": "digits", "batch_size": -1})
