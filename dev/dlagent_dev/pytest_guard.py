"""A pytest plugin: a test session that leaves a process running fails, and says which.

Loaded by ``tests/conftest.py`` (``-p dlagent_dev.pytest_guard`` elsewhere). When the session
starts, every process it starts from then on inherits a mark in its environment
(:func:`dlagent_dev.leftovers.begin_session`); when it ends, whatever is still alive and was started
by it — a process group it created (the ``procs`` fixture, :class:`dlagent_dev.stack.LocalStack`),
a process carrying its mark, or an orphan whose command line holds the checkout's path — is
listed, stopped, and the session's exit status set to failure.

It also fails a session that wrote MLflow runs into the checkout: MLflow puts the artifacts of
an experiment created without an artifact location in ``./mlruns`` of the current directory,
which is the checkout during a test session; a test's artifacts belong in its ``tmp_path``.
"""

from __future__ import annotations

import sys

import pytest

from dlagent_dev import leftovers
from dlagent_dev.env import PROJECT_DIR

_state: dict = {}
# where MLflow writes by default, relative to the current directory (the checkout)
CHECKOUT_ARTIFACT_DIRS = ("mlruns", "mlartifacts")


def checkout_artifacts() -> set[str]:
    """Experiment and run folders MLflow's defaults have left in the checkout."""
    found = set()
    for name in CHECKOUT_ARTIFACT_DIRS:
        top = PROJECT_DIR / name
        if top.is_dir():
            found |= {str(path.relative_to(PROJECT_DIR)) for path in top.glob("*/*")}
    return found


def pytest_configure(config):
    if "session" not in _state:
        # Under pytest-xdist each worker checks what it started itself (its own mark); only the
        # controller also looks for orphans by the checkout's path, once every worker is done,
        # so a worker that finishes first never takes the other's running processes for leftovers.
        worker = hasattr(config, "workerinput")
        _state["session"] = leftovers.begin_session(None if worker else PROJECT_DIR)
        if not worker:
            _state["artifacts"] = checkout_artifacts()


@pytest.hookimpl(trylast=True)  # after pytest-xdist has shut its workers down
def pytest_sessionfinish(session, exitstatus):
    run = _state.get("session")
    if run is None:
        return
    found = leftovers.end_session(run)
    if found:
        _fail(session, "processes left running", leftovers.report(found, "process(es) this test session left running (now stopped)"))
    if "artifacts" in _state:
        written = sorted(checkout_artifacts() - _state["artifacts"])
        if written:
            _fail(session, "MLflow runs written into the checkout", f"{len(written)} new folder(s), e.g. {written[:5]}: a test "
                  "created an experiment without an artifact location (give it one under tmp_path)")


def _fail(session, title: str, message: str) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", title, red=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
