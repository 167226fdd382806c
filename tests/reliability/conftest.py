"""The reliability suite's shared recording: each check writes one JSON line (see ``recording.py``).

``reliability_record(kind, name, ok, lost=0, detail="")`` appends
``{"kind", "name", "ok", "lost", "detail"}`` to the file named by ``DLAGENT_RELIABILITY_RECORD``
(nothing when it is unset) and returns the record. ``kind`` is ``fault``, ``bad_input``,
``concurrency`` or ``security``; ``lost`` counts items lost (trials, runs, versions, files).

If a test that uses the fixture fails and recorded no ``ok=False`` line itself, a failure
line is added for it, so the report never shows a failed check as passed: under the
(kind, name) it last recorded, or, when it recorded nothing, under ``RELIABILITY_KIND`` (a
module-level constant of the test module, when set) and the test's name.
"""

from __future__ import annotations

import pytest

from tests.reliability.recording import KINDS, RECORD_ENV, record  # noqa: F401 - re-exported for test modules


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_reliability_rep_{report.when}", report)


@pytest.fixture
def reliability_record(request):
    """``reliability_record(kind, name, ok, lost=0, detail="") -> dict``: record one check's outcome."""
    calls: list[dict] = []

    def _record(kind: str, name: str, ok: bool, lost: int = 0, detail: str = "") -> dict:
        entry = record(kind, name, ok, lost=lost, detail=detail)
        calls.append(entry)
        return entry

    yield _record

    report = getattr(request.node, "_reliability_rep_call", None)
    if report is None or not report.failed or any(not c["ok"] for c in calls):
        return
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    lines = str(getattr(report, "longrepr", "") or "").strip().splitlines()
    detail = "test failed: " + (crash.message if crash is not None else lines[-1] if lines else "see the pytest output")
    if calls:
        last = calls[-1]
        record(last["kind"], last["name"], False, lost=last["lost"], detail=detail)
        return
    kind = getattr(request.module, "RELIABILITY_KIND", None)
    if kind in KINDS:
        record(kind, request.node.name, False, detail=detail)
