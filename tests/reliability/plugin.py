"""The pytest side of the reliability recording: the ``reliability_record`` fixture and the failure line.

Loaded by ``tests/reliability/conftest.py``; a suite elsewhere can load it with
``-p tests.reliability.plugin`` (the report's own tests do).

A test that fails and recorded no ``ok=False`` line itself gets one, whether it failed in its
body or while its fixtures were set up (a live stack that never came up is a fault not
survived, not a fault that was not tried): under the (kind, name) it last recorded, keeping the
items it counted as lost, or, when it recorded nothing, under its module's ``RELIABILITY_KIND``
and the test's name.
"""

from __future__ import annotations

import pytest

from tests.reliability.recording import KINDS, record

CALLS_ATTR = "_reliability_calls"


def _failure_detail(report) -> str:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    lines = str(getattr(report, "longrepr", "") or "").strip().splitlines()
    where = "" if report.when == "call" else f" (in {report.when})"
    return f"test failed{where}: " + (crash.message if crash is not None else lines[-1] if lines else "see the pytest output")


def _record_failure(item, report) -> None:
    calls = getattr(item, CALLS_ATTR, [])
    if any(not c["ok"] for c in calls):
        return  # the test said itself what failed
    detail = _failure_detail(report)
    if calls:
        last = calls[-1]
        calls.append(record(last["kind"], last["name"], False, lost=last["lost"], detail=detail))
        return
    kind = getattr(item.module, "RELIABILITY_KIND", None) if getattr(item, "module", None) else None
    if kind in KINDS:
        calls.append(record(kind, item.name, False, detail=detail))
        setattr(item, CALLS_ATTR, calls)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _record_failure(item, report)


@pytest.fixture
def reliability_record(request):
    """``reliability_record(kind, name, ok, lost=0, detail="") -> dict``: record one check's outcome."""
    calls: list[dict] = []
    setattr(request.node, CALLS_ATTR, calls)

    def _record(kind: str, name: str, ok: bool, lost: int = 0, detail: str = "") -> dict:
        entry = record(kind, name, ok, lost=lost, detail=detail)
        calls.append(entry)
        return entry

    return _record
