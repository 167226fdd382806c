"""One JSON line per reliability check, appended to the file named by ``DLAGENT_RELIABILITY_RECORD``.

The reliability suite (faults, bad inputs, concurrency, security) records what it tried and
whether it survived; ``tests/reliability/report.py`` runs the suite with the variable set and
prints the table. Without the variable, :func:`record` writes nothing (a plain ``pytest`` run).

A line is ``{"kind": "fault"|"bad_input"|"concurrency"|"security", "name": str, "ok": bool,
"lost": int, "detail": str}``. Lines are appended with one ``write`` on a file opened with
``O_APPEND``, so checks in several processes (a killed worker's parent, pytest-xdist) may
record into the same file. Nothing here imports Airflow, MLflow or the ML stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RECORD_ENV = "DLAGENT_RELIABILITY_RECORD"
KINDS = ("fault", "bad_input", "concurrency", "security")
MAX_DETAIL = 2000  # characters of detail kept per line


def record(kind: str, name: str, ok: bool, lost: int = 0, detail: str = "") -> dict:
    """Validate and append one record; return it. No file is written when the variable is unset."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(ok, bool):
        raise ValueError(f"ok must be a bool, got {ok!r}")
    if isinstance(lost, bool) or not isinstance(lost, int) or lost < 0:
        raise ValueError(f"lost must be an integer >= 0, got {lost!r}")
    entry = {"kind": kind, "name": name.strip(), "ok": ok, "lost": lost, "detail": str(detail)[:MAX_DETAIL]}
    path = os.environ.get(RECORD_ENV)
    if path:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return entry


def read_records(path) -> list[dict]:
    """Every well-formed line of a record file, in order (a torn or foreign line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("kind") in KINDS and isinstance(entry.get("name"), str):
            out.append(entry)
    return out


def latest(records: list[dict]) -> list[dict]:
    """One record per (kind, name): the last one written (a check that re-records its verdict wins)."""
    by_key: dict[tuple, dict] = {}
    for entry in records:
        by_key.pop((entry["kind"], entry["name"]), None)
        by_key[(entry["kind"], entry["name"])] = entry
    return list(by_key.values())
