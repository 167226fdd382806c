"""The reliability report can fail: a failed fault counts as not survived with its losses, zero checks is an error.

Each case runs the real ``tests/reliability/report.py`` on a small suite written to a temporary
folder, with the same recording plugin the reliability suite loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.reliability.report import LOST_EXIT, NOTHING_TRIED_EXIT

REPORT = Path(__file__).with_name("report.py")
PROJECT_DIR = Path(__file__).resolve().parents[2]


def _report(tmp_path: Path, body: str, *args: str) -> tuple[int, dict, str]:
    suite = tmp_path / "test_suite_under_report.py"
    suite.write_text(textwrap.dedent(body))
    completed = subprocess.run([sys.executable, str(REPORT), str(suite), "-p", "tests.reliability.plugin", "-q",
                                "-p", "no:cacheprovider", *args],
                               cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
                               env={"PATH": "/usr/bin:/bin", "DLAGENT_REPORT_NO_REEXEC": "1", "PYTHONPATH": str(PROJECT_DIR)})
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stdout + completed.stderr
    return completed.returncode, json.loads(lines[-1][len("RESULT "):]), completed.stdout


def test_a_suite_whose_every_check_is_skipped_is_an_error(tmp_path):
    code, result, out = _report(tmp_path, """
        import pytest
        RELIABILITY_KIND = "fault"

        @pytest.mark.skip(reason="no PostgreSQL here")
        def test_a_fault(reliability_record):
            reliability_record("fault", "never tried", True)
    """)
    assert code == NOTHING_TRIED_EXIT, out
    assert result["faults_tried"] == 0 and result["pytest_exit_code"] == 0
    assert "NOTHING WAS TRIED" in out


def test_a_run_that_deselects_every_check_is_an_error_too(tmp_path):
    code, result, out = _report(tmp_path, """
        def test_a_fault(reliability_record):
            reliability_record("fault", "never tried", True)
    """, "-k", "no_such_test")
    assert code == NOTHING_TRIED_EXIT and result["pytest_exit_code"] == 5, out


def test_failed_faults_are_not_survived_and_keep_their_losses(tmp_path):
    code, result, out = _report(tmp_path, """
        import pytest
        RELIABILITY_KIND = "fault"

        @pytest.fixture
        def live_stack():
            raise RuntimeError("the scheduler never came up")

        def test_stack_fault(live_stack, reliability_record):
            reliability_record("fault", "scheduler killed", True)

        def test_recorded_ok_then_failed(reliability_record):
            reliability_record("fault", "worker killed", True, lost=2)
            assert False, "a later check found two trials missing"

        def test_failed_before_recording(reliability_record):
            raise TimeoutError("the study never finished")

        def test_survived(reliability_record):
            reliability_record("fault", "mlflow down", True)
    """)
    assert code == 1, out
    assert result["faults_tried"] == 4 and result["faults_survived"] == 1, result
    assert result["items_lost"] == 2 and result["checks_failed"] == 3
    failed_rows = [line.split()[1] for line in out.splitlines() if line.startswith("fault ") and " FAILED " in line]
    assert sorted(failed_rows) == ["test_failed_before_recording", "test_stack_fault", "worker"], out
    assert "test failed (in setup): RuntimeError: the scheduler never came up" in out


def test_a_passing_suite_that_lost_an_item_fails(tmp_path):
    code, result, out = _report(tmp_path, """
        def test_lost_one(reliability_record):
            reliability_record("concurrency", "two deploys", True, lost=1)
    """)
    assert code == LOST_EXIT and result["pytest_exit_code"] == 0 and result["items_lost"] == 1, out


def test_a_clean_suite_passes(tmp_path):
    code, result, out = _report(tmp_path, """
        def test_refused(reliability_record):
            reliability_record("bad_input", "negative epochs", True)
    """)
    assert code == 0 and result["bad_inputs_refused"] == result["bad_inputs_tried"] == 1, out
