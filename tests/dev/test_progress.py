"""make run's progress lines, read from recorded ``airflow dags test`` output of real runs.

``data/dags_test_success.log``: ``make run CONF='{"n_trials": 2, "epochs": 3}'`` (a successful run);
``data/dags_test_failure.log``: a run whose first task failed (an ImportError) and was retried.
Both are the lines Airflow 3.3.2 wrote, each cut at 400 characters.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from dlagent_dev.progress import DagTestProgress, XComReader, format_event, headline

DATA = Path(__file__).parent / "data"
RUN_ID = "manual__2026-12-01T19:43:29.488760+00:00"


def _events(name: str) -> tuple[list, DagTestProgress]:
    progress = DagTestProgress()
    events = []
    for line in (DATA / name).read_text().splitlines(keepends=True):
        events += progress.feed(line)
    return events, progress


def test_a_successful_run_gives_one_start_and_one_end_per_task_with_durations():
    events, progress = _events("dags_test_success.log")
    assert (progress.dag_id, progress.run_id, progress.run_state) == ("dl_agent_pipeline", RUN_ID, "success")
    ends = [e for e in events if e.kind == "end"]
    assert [e.label for e in ends] == [
        "validate_inputs", "create_study", "tune[0]", "tune_summary", "agent_plan", "train", "compression_candidates",
        "compress[1]", "compress[2]", "compress[3]", "compress[0]", "evaluate", "agent_decide", "follow_plan", "deploy", "finish"]
    assert [e.label for e in events if e.kind == "start"] == [e.label for e in ends]
    assert all(e.state == "success" and not e.failed for e in ends)
    durations = {e.label: e.seconds for e in ends}
    assert durations["validate_inputs"] == pytest.approx(28.726, abs=0.01)  # 19:43:32.137 -> 19:44:00.863
    assert durations["tune[0]"] == pytest.approx(31.736, abs=0.01)
    assert all(0 < s < 60 for s in durations.values())
    # the recorded run logged "XCom not found" errors in tasks that succeeded: never shown for them
    assert any(e.errors for e in ends)
    assert not [line for e in ends for line in format_event(e) if "!" in line]


def test_a_failed_task_shows_its_error_and_exception_lines():
    events, progress = _events("dags_test_failure.log")
    assert progress.run_state == "failed"
    ends = [(e.label, e.state) for e in events if e.kind == "end"]
    assert ends == [("validate_inputs", "up_for_retry"), ("validate_inputs", "failed"), ("finish", "up_for_retry"), ("finish", "failed")]
    first = next(e for e in events if e.kind == "end")
    lines = format_event(first)
    assert "up_for_retry" in lines[0] and "validate_inputs" in lines[0] and "20.1 s" in lines[0]
    assert any(line.endswith("! Task failed with exception") for line in lines)
    assert any("ImportError: cannot import name 'validate_search_space'" in line for line in lines)
    assert all(len(line) < 500 for line in lines)


RECORDED_XCOMS = {  # return values of the recorded successful run (trimmed to the keys the figures read)
    "validate_inputs": {"data": {"dataset": "digits", "num_classes": 10, "input_shape": [8, 8], "n_train": 1257, "n_val": 270, "n_test": 270}},
    "create_study": [0],
    "tune": {"trials": [0, 1], "states": {"COMPLETE": 2}, "epochs_run": 6},
    "tune_summary": {"metric": "val_accuracy", "best_value": 0.9481481313705444, "n_finished": 2},
    "agent_plan": {"action": "retune", "train": {"epochs": 7, "learning_rate": 0.0026070247583707684},
                   "warm_start": "runs:/40addfa1d99345e098b6737411265ab1/checkpoint/model.keras", "compress": [{}, {}, {}, {}]},
    "train": {"metrics": {"best_val_accuracy": 0.9814814925193787, "epochs_run": 7}},
    "compression_candidates": [{}, {}, {}, {}],
    "compress": {"candidate": "pruned80+int8", "metrics": {"size_bytes": 486304, "gzip_size_bytes": 161371, "val_accuracy": 0.9851851851851852,
                                                          "test_accuracy": 0.9814814814814815}},
    "evaluate": {"blessed": True, "candidate": {"candidate": "pruned80+int8"}, "test_accuracy": 0.9814814814814815},
    "agent_decide": {"action": "deploy", "train": {"epochs": 7}},
    "follow_plan": "deploy",
    "deploy": {"name": "dlagent-classifier", "version": "1", "created": True},
    "finish": {"status": "FINISHED", "test_accuracy": 0.9814814814814815},
}


def test_a_compress_line_gives_the_test_score_of_the_metric_it_was_chosen_on():
    metrics = {"size_bytes": 10, "gzip_size_bytes": 5, "val_f1_macro": 0.5, "test_accuracy": 0.9, "test_f1_macro": 0.4}
    assert headline("compress", {"candidate": "int8", "metrics": metrics}) == (
        "int8: 10 bytes (gzip 5), val. f1_macro 0.5000 (chosen on), test f1_macro 0.4000")


def test_each_task_has_a_headline_figure():
    figures = {task: headline(task, value) for task, value in RECORDED_XCOMS.items()}
    assert figures == {
        "validate_inputs": "digits: 1257 train / 270 val / 270 test samples, 10 classes",
        "create_study": "1 tuning worker(s)",
        "tune": "2 trial(s) run (2 complete), 6 epochs",
        "tune_summary": "best val_accuracy 0.9481 of 2 finished trial(s)",
        "agent_plan": "plan: train 7 epochs, learning rate 0.0026, warm start, 4 compression candidate(s)",
        "train": "val. accuracy 0.9815, 7 epochs",
        "compression_candidates": "4 compression candidate(s)",
        "compress": "pruned80+int8: 486,304 bytes (gzip 161,371), val. accuracy 0.9852 (chosen on), test accuracy 0.9815",
        "evaluate": "gate: blessed (pruned80+int8, test accuracy 0.9815)",
        "agent_decide": "decided: deploy",
        "follow_plan": "branch deploy",
        "deploy": "dlagent-classifier version 1 is champion",
        "finish": "parent run FINISHED, test accuracy 0.9815",
    }


def test_a_regression_run_shows_its_primary_metric():
    data = {"dataset": "csv:d.csv", "task": "regression", "metric": "rmse", "num_classes": 1, "n_train": 310, "n_val": 66, "n_test": 66}
    assert headline("validate_inputs", {"data": data}) == "csv:d.csv: 310 train / 66 val / 66 test samples, 1 target(s), metric rmse"
    assert headline("validate_inputs", {"data": data, "config": {"model": "mlp"}}).endswith("metric rmse, model mlp")  # what 'auto' became
    assert headline("train", {"metrics": {"best_val_rmse": 52.31, "epochs_run": 9}}) == "val. rmse 52.31, 9 epochs"
    assert headline("evaluate", {"blessed": False, "candidate": {"candidate": "int8"}, "metric": "rmse", "test_metric": 55.5}) == \
        "gate: not blessed (int8, test rmse 55.5)"
    assert headline("finish", {"status": "FINISHED", "metric": "r2", "test_metric": 0.4567}) == "parent run FINISHED, test r2 0.4567"


@pytest.mark.parametrize("value", [None, {}, [], "x", {"metrics": None}, {"data": {"dataset": "d"}}, 3])
def test_a_missing_or_odd_figure_is_empty_never_an_error(value):
    for task in RECORDED_XCOMS:
        assert isinstance(headline(task, value), str)
    assert headline("train", value) == ""
    assert headline("a_task_of_yours", {"anything": 1}) == ""


def make_xcom_db(path: Path, values: dict[tuple[str, int], object]) -> str:
    """A metadata DB with Airflow 3's xcom table (the columns we read) holding ``values``."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE xcom (dag_run_id INTEGER, task_id TEXT, map_index INTEGER, key TEXT, dag_result BOOLEAN, "
               "dag_id TEXT, run_id TEXT, value JSON, timestamp DATETIME)")
    for (task_id, map_index), value in values.items():
        db.execute("INSERT INTO xcom VALUES (1, ?, ?, 'return_value', 0, 'dl_agent_pipeline', ?, ?, '2026-12-01')",
                   (task_id, map_index, RUN_ID, json.dumps(value)))
        db.execute("INSERT INTO xcom VALUES (1, ?, ?, 'other', 0, 'dl_agent_pipeline', ?, '\"no\"', '2026-12-01')",
                   (task_id, map_index, RUN_ID))
    db.commit()
    db.close()
    return f"sqlite:///{path}"


def test_the_figure_comes_from_the_tasks_xcom_in_the_metadata_db(tmp_path):
    url = make_xcom_db(tmp_path / "airflow.db", {("train", -1): RECORDED_XCOMS["train"], ("compress", 3): RECORDED_XCOMS["compress"]})
    reader = XComReader(url)
    try:
        assert reader.return_value("dl_agent_pipeline", RUN_ID, "train", -1) == RECORDED_XCOMS["train"]
        assert reader.return_value("dl_agent_pipeline", RUN_ID, "compress", 3)["candidate"] == "pruned80+int8"
        assert reader.return_value("dl_agent_pipeline", RUN_ID, "compress", 0) is None
        assert reader.return_value("dl_agent_pipeline", None, "train", -1) is None  # the run id not seen yet
    finally:
        reader.close()
    assert XComReader(f"sqlite:///{tmp_path / 'missing' / 'no.db'}").return_value("d", "r", "t", -1) is None


def test_dags_test_timing_moves_the_execution_apis_start_out_of_the_first_task_and_counts_idle_passes():
    """bench/overhead.py's reading of a `dags test` log. ``data/dags_test_tuning_off.log``: the
    overhead benchmark's pipeline (MNIST, tuning off, one candidate) as Airflow 3.3.2 wrote it on
    2026-12-05, each line cut at 400 characters: the first task waited 3.67 s for the in-process
    execution API to start, every other task about 0.01 s; one idle pass after the empty `tune`."""
    from dlagent_dev.progress import dags_test_timing

    timing = dags_test_timing((DATA / "dags_test_tuning_off.log").read_text())
    assert 3.6 < timing["execution_api_s"] < 3.7
    assert timing["idle_passes"] == 1
    assert list(timing["tasks"])[:3] == ["validate_inputs", "agent_budget", "create_study"]
    assert "tune" not in timing["tasks"]  # skipped: the map had nothing to expand
    assert all({"start", "end"} <= set(span) for span in timing["tasks"].values())
    # a run with tuning: the mapped tune instances ran, no pass found nothing to run
    tuned = dags_test_timing((DATA / "dags_test_success.log").read_text())
    assert tuned["idle_passes"] == 0 and {"tune[0]", "compress[0]", "compress[3]"} <= set(tuned["tasks"])  # each mapped instance its own
    assert 0 <= tuned["execution_api_s"] < 30


def test_dags_test_timing_refuses_a_log_without_the_execution_apis_lines():
    from dlagent_dev.progress import dags_test_timing

    with pytest.raises(ValueError, match="log format changed"):
        dags_test_timing("2026-12-05T07:57:42.111Z [info     ] [DAG TEST] starting task_id=validate_inputs map_index=-1\n")
