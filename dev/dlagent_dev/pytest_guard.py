"""A pytest plugin: a test session that leaves a process running fails, and says which.

Loaded by ``tests/conftest.py`` (``-p dlagent_dev.pytest_guard`` elsewhere). When the session
starts, every process it starts from then on inherits a mark in its environment
(:func:`dlagent_dev.procs.begin_session`); when it ends, whatever is still alive and was started
by it — a process group it created (the ``procs`` fixture, :class:`dlagent_dev.stack.LocalStack`),
a process carrying its mark, or an orphan whose command line holds the checkout's path — is
listed, stopped, and the session's exit status set to failure.
"""

from __future__ import annotations

import sys

import pytest

from dlagent_dev import procs
from dlagent_dev.env import PROJECT_DIR

_state: dict = {}


def pytest_configure(config):
    if "session" not in _state:
        # Under pytest-xdist each worker checks what it started itself (its own mark); only the
        # controller also looks for orphans by the checkout's path, once every worker is done,
        # so a worker that finishes first never takes the other's running processes for leftovers.
        worker = hasattr(config, "workerinput")
        _state["session"] = procs.begin_session(None if worker else PROJECT_DIR)


@pytest.hookimpl(trylast=True)  # after pytest-xdist has shut its workers down
def pytest_sessionfinish(session, exitstatus):
    run = _state.get("session")
    if run is None:
        return
    found = procs.end_session(run)
    if not found:
        return
    message = procs.report(found, "process(es) this test session left running (now stopped)")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes left running", red=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
