"""Run the reliability suite and print what it tried, what survived or was refused, and what was lost.

    python tests/reliability/report.py                 # the whole suite (tests/reliability)
    python tests/reliability/report.py -k bad_input    # extra arguments go to pytest
    python tests/reliability/report.py tests/reliability/test_security.py -x

Run it from anywhere with any Python 3: it re-runs itself with the project's ``.venv`` Python
when that exists and is not the one running. pytest runs in a subprocess with
``DLAGENT_RELIABILITY_RECORD`` pointing at a temporary file, each check appends one JSON line
there (``tests/reliability/recording.py``), and this script prints a table per kind (tried /
survived or refused / lost) and one row per item, then one line::

    RESULT {"faults_survived": ..., "faults_tried": ..., "bad_inputs_refused": ..., "bad_inputs_tried": ..., "items_lost": ..., ...}

The exit code is pytest's when pytest failed, 3 when pytest passed but an item was lost,
else 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
SUITE = "tests/reliability"
LOST_EXIT = 3
NOTHING_TRIED_EXIT = 4
PYTEST_NO_TESTS_COLLECTED = 5  # pytest's exit code when -k or -m deselected every test
# What "ok" means per kind, for the table's headings.
OK_WORD = {"fault": "survived", "bad_input": "refused", "concurrency": "survived", "security": "passed"}


def _venv_python() -> Path | None:
    candidate = PROJECT_DIR / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else None


def _reexec_in_venv() -> None:
    """Use the project's virtual environment when started with another interpreter."""
    venv = _venv_python()
    if venv is None or os.environ.get("DLAGENT_REPORT_NO_REEXEC"):
        return
    if Path(sys.prefix).resolve() == venv.parent.parent.resolve():
        return
    env = {**os.environ, "DLAGENT_REPORT_NO_REEXEC": "1"}
    os.execve(str(venv), [str(venv), str(Path(__file__).resolve()), *sys.argv[1:]], env)


# pytest options whose value is the next argument (that value is never a test path to run)
OPTIONS_WITH_VALUE = {"-k", "-m", "-p", "-o", "-c", "-W", "-n", "--deselect", "--ignore", "--ignore-glob", "--rootdir",
                      "--basetemp", "--maxfail", "--tb", "--durations", "--junitxml", "--junit-xml", "--log-level",
                      "--override-ini", "--confcutdir", "--import-mode", "--capture", "--cov"}


def _pytest_command(args: list[str]) -> list[str]:
    """``pytest tests/reliability ARGS``; a test path among the arguments replaces the default folder."""
    has_path, skip = False, False
    for arg in args:
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and (PROJECT_DIR / arg.split("::")[0]).exists():
            has_path = True
    return [sys.executable, "-m", "pytest", *([] if has_path else [SUITE]), *args]


def summarize(records: list[dict]) -> dict:
    by_kind = {kind: [r for r in records if r["kind"] == kind] for kind in OK_WORD}
    ok = {kind: sum(1 for r in rows if r["ok"]) for kind, rows in by_kind.items()}
    return {
        "faults_survived": ok["fault"],
        "faults_tried": len(by_kind["fault"]),
        "bad_inputs_refused": ok["bad_input"],
        "bad_inputs_tried": len(by_kind["bad_input"]),
        "items_lost": sum(int(r.get("lost", 0)) for r in records),
        "concurrency_survived": ok["concurrency"],
        "concurrency_tried": len(by_kind["concurrency"]),
        "security_passed": ok["security"],
        "security_tried": len(by_kind["security"]),
        "checks_failed": sum(1 for r in records if not r["ok"]),
    }


def exit_code(result: dict, records: list[dict]) -> int:
    """pytest's failure first; then nothing tried; then a lost item or a check that did not survive."""
    if result["pytest_exit_code"] == PYTEST_NO_TESTS_COLLECTED or (result["pytest_exit_code"] == 0 and not records):
        return NOTHING_TRIED_EXIT
    if result["pytest_exit_code"] != 0:
        return result["pytest_exit_code"]
    return LOST_EXIT if result["items_lost"] or result["checks_failed"] else 0


def format_table(records: list[dict]) -> str:
    lines = ["", "reliability suite", "", f"{'kind':<12} {'tried':>6} {'ok':>14} {'lost':>6}"]
    for kind, word in OK_WORD.items():
        rows = [r for r in records if r["kind"] == kind]
        ok = sum(1 for r in rows if r["ok"])
        lost = sum(int(r.get("lost", 0)) for r in rows)
        lines.append(f"{kind:<12} {len(rows):>6} {f'{ok} {word}':>14} {lost:>6}")
    lines += ["", f"{'kind':<12} {'item':<48} {'result':<9} {'lost':>4}  detail"]
    for r in sorted(records, key=lambda r: (list(OK_WORD).index(r["kind"]), r["name"])):
        result = OK_WORD[r["kind"]] if r["ok"] else "FAILED"
        detail = " ".join(str(r.get("detail", "")).split())
        if len(detail) > 110:
            detail = detail[:107] + "..."
        lines.append(f"{r['kind']:<12} {r['name'][:48]:<48} {result:<9} {int(r.get('lost', 0)):>4}  {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(PROJECT_DIR))
    from tests.reliability.recording import RECORD_ENV, latest, read_records

    args = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="dlagent-reliability-") as folder:
        record_file = Path(folder) / "records.jsonl"
        record_file.touch()
        command = _pytest_command(args)
        print("[reliability] " + " ".join(command), flush=True)
        completed = subprocess.run(command, cwd=PROJECT_DIR, env={**os.environ, RECORD_ENV: str(record_file)})
        records = latest(read_records(record_file))
    print(format_table(records) if records else
          "\nreliability suite: NOTHING WAS TRIED: no check ran and recorded a result (all skipped or deselected?); "
          "a run of zero checks is an error, not a pass")
    result = {**summarize(records), "pytest_exit_code": completed.returncode}
    print("RESULT " + json.dumps(result), flush=True)
    return exit_code(result, records)


if __name__ == "__main__":
    _reexec_in_venv()
    sys.exit(main())
