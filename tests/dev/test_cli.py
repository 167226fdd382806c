"""The command line: ``make run``'s task lines while ``airflow dags test`` runs, and the servers of
``make serve`` / ``make mlflow-ui`` stopped as whole process groups.

``airflow dags test`` is replaced here by a process that replays recorded output (tests/dev/data);
the real command runs in tests/e2e/test_pipeline_dag.py and ``make run``.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from dlagent_dev import cli, procs
from dlagent_dev.stack import free_port

from tests.conftest import PROJECT_DIR
from tests.dev.fake_stack import SERVICE
from tests.dev.test_progress import DATA, RECORDED_XCOMS, make_xcom_db

REPLAY = """
import sys, time
for line in open(sys.argv[1]):
    sys.stdout.write(line)
    sys.stdout.flush()
    time.sleep(0.002)
sys.exit(int(sys.argv[2]))
"""


def _follow(tmp_path, recorded: str, returncode: int, xcoms: dict) -> tuple[int, str, str]:
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": make_xcom_db(tmp_path / "airflow.db", xcoms)}
    log_path = tmp_path / "logs" / "run.log"
    out = io.StringIO()
    code, _ = cli.follow_dag_test([sys.executable, "-c", REPLAY, str(DATA / recorded), str(returncode)], env, log_path, out=out)
    return code, out.getvalue(), log_path.read_text()


def test_make_run_prints_one_line_per_task_start_and_end_and_keeps_the_full_log(tmp_path):
    xcoms = {("train", -1): RECORDED_XCOMS["train"], ("compress", 3): RECORDED_XCOMS["compress"],
             ("evaluate", -1): RECORDED_XCOMS["evaluate"], ("tune", 0): RECORDED_XCOMS["tune"]}
    code, printed, log = _follow(tmp_path, "dags_test_success.log", 0, xcoms)
    assert code == 0
    assert log == (DATA / "dags_test_success.log").read_text()  # every line of Airflow's output is in the log file
    lines = printed.splitlines()
    assert len(lines) == 32  # 16 task instances, a start and an end each; nothing else
    assert all(line.startswith("[dlagent] ") for line in lines)
    ends = [line for line in lines if " success " in line]
    assert "val. accuracy 0.9815, 7 epochs" in next(line for line in ends if " train " in line)
    assert "pruned80+int8: 486,304 bytes" in next(line for line in ends if "compress[3]" in line)
    assert next(line for line in ends if "compress[1]" in line).endswith(" s")  # no XCom: no figure, no error
    assert "gate: blessed" in next(line for line in ends if " evaluate " in line)
    assert "2 trial(s) run" in next(line for line in ends if "tune[0]" in line)
    assert "error" not in printed.lower() and "!" not in printed


def test_make_run_shows_the_error_lines_of_a_failed_task(tmp_path):
    code, printed, _ = _follow(tmp_path, "dags_test_failure.log", 1, {})
    assert code == 1
    assert "ImportError: cannot import name 'validate_search_space'" in printed
    assert printed.count("failed       validate_inputs") == 1 and "up_for_retry validate_inputs" in printed


def test_a_run_that_fails_before_any_task_shows_the_end_of_its_log(tmp_path):
    (tmp_path / "broken.log").write_text("Traceback (most recent call last):\nSyntaxError: the DAG file is broken\n")
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'none.db'}"}
    out = io.StringIO()
    code, _ = cli.follow_dag_test([sys.executable, "-c", REPLAY, str(tmp_path / "broken.log"), "1"], env, tmp_path / "run.log", out=out)
    assert code == 1 and "SyntaxError: the DAG file is broken" in out.getvalue()


FOREGROUND = """
import os, sys
from dlagent_dev.cli import run_foreground
sys.exit(run_foreground([sys.executable, "-c", sys.argv[1], sys.argv[2]], dict(os.environ), tag=sys.argv[3]))
"""


def _serve(port: int, tag: str) -> subprocess.Popen:
    """A `make serve` whose server is the fake service (an HTTP server with a helper process)."""
    return subprocess.Popen([sys.executable, "-c", FOREGROUND, SERVICE, str(port), tag], cwd=PROJECT_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_serving(port: int, process: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_serve_stops_the_server_and_its_workers(tmp_path, sig):
    port, tag = free_port(), f"serve:{tmp_path}"
    wrapper = _serve(port, tag)
    try:
        _wait_serving(port, wrapper)
        assert len(procs.tagged(tag)) == 2  # the server and its helper
        wrapper.send_signal(sig)
        output, _ = wrapper.communicate(timeout=60)
        assert wrapper.returncode == 0 and "stopping" in output
        assert procs.tagged(tag) == []
    finally:
        procs.stop_group(wrapper, grace=2)
        procs.stop_orphans(tag)


def test_a_killed_make_serve_is_cleaned_up_by_the_next_one_on_the_same_port(tmp_path):
    port, tag = free_port(), f"serve:{tmp_path}"
    first = _serve(port, tag)
    second = None
    try:
        _wait_serving(port, first)
        left = {p.pid for p in procs.tagged(tag)}
        first.kill()
        first.wait()
        assert {p.pid for p in procs.tagged(tag)} == left  # SIGKILL: the server lives on, holding the port
        second = _serve(port, tag)
        first_line = second.stdout.readline()  # said before it starts its own server
        assert "stopped 2 process(es) an earlier, killed run left behind" in first_line
        assert not left & {p.pid for p in procs.tagged(tag)}
        _wait_serving(port, second)  # on the same port
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=60)
        assert second.returncode == 0 and procs.tagged(tag) == []
    finally:
        for wrapper in (first, second):
            if wrapper is not None:
                procs.stop_group(wrapper, grace=2)
        procs.stop_orphans(tag)


@pytest.mark.parametrize(("best", "line"), [(0.9731, "best val. value 0.9731"), (None, "no completed trial")])
def test_the_run_summary_says_when_tuning_found_no_trial(mlflow_uri, capsys, best, line):
    """``make run``'s summary: a study with no completed trial (``n_trials`` 0) is said in words, not as ``nan``."""
    from dlagent.ml import mlflow_names as names
    from dlagent_dev.cli import PIPELINE_DAG, print_summary
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("summary")
    run = client.create_run(experiment, tags={names.AIRFLOW_DAG_ID_TAG: PIPELINE_DAG, names.KIND_TAG: names.KIND_PIPELINE,
                                              f"{names.SUMMARY_TAG_PREFIX}study_name": "dl_agent_pipeline.manual__1"}).info.run_id
    client.log_metric(run, "test_metric", 0.95)
    if best is not None:
        client.log_metric(run, "tune_best_value", best)
    client.set_terminated(run)
    assert print_summary({}, "summary", 0, 0) == 0
    printed = capsys.readouterr().out
    assert f"tuning:             study dl_agent_pipeline.manual__1, {line}" in printed and "nan" not in printed.split("tuning:")[1].split("\n")[0]
