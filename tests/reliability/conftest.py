"""The reliability suite's shared recording: each check writes one JSON line (see ``recording.py``).

``reliability_record(kind, name, ok, lost=0, detail="")`` appends
``{"kind", "name", "ok", "lost", "detail"}`` to the file named by ``DLAGENT_RELIABILITY_RECORD``
(nothing when it is unset) and returns the record. ``kind`` is ``fault``, ``bad_input``,
``concurrency`` or ``security``; ``lost`` counts items lost (trials, runs, versions, files).

A test that fails (in its body or in setting up its fixtures) and recorded no ``ok=False``
line itself gets one, so the report never shows a failed check as passed: see
``tests/reliability/plugin.py``.
"""

from __future__ import annotations

from tests.reliability.plugin import pytest_runtest_makereport, reliability_record  # noqa: F401 - pytest finds them here
from tests.reliability.recording import KINDS, RECORD_ENV, record  # noqa: F401 - re-exported for test modules
