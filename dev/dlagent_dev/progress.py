"""``make run``'s progress: one line per task of ``airflow dags test`` output, as it is written.

``airflow dags test`` logs several hundred lines per run. :class:`DagTestProgress` reads them one
by one (the whole output goes to a log file) and reports what a person wants to follow: a task
starting, a task ending with its state, duration and headline figure (trials done, validation
accuracy, candidate size, gate decision: :func:`headline`, from the task's XCom return value), and
the error lines of a task that failed. The lines it reads (Airflow 3.3's structlog console format)::

    2026-12-01T19:43:32.137367Z [info     ] [DAG TEST] starting task_id=validate_inputs map_index=-1 [...]
    2026-12-01T19:43:32.137900Z [info     ] [DAG TEST] running task <TaskInstance: dl_agent_pipeline.validate_inputs manual__... [...]
    2026-12-01T19:44:00.564231Z [info     ] Task instance state updated [...] new_state=success rows_affected=1 ti_id=...
    2026-12-01T19:44:00.863551Z [info     ] [DAG TEST] end task task_id=validate_inputs map_index=-1 [...]
    2026-12-01T19:46:01.340302Z [info     ] DagRun Finished: dag_id=..., state=success, ...

Nothing here imports Airflow; a missing figure prints nothing and never stops the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

TASK_LINE = re.compile(r"^(?P<at>\S+Z) .*\[DAG TEST\] (?P<event>starting|end task) task_id=(?P<task>[\w.-]+)(?: map_index=(?P<map>-?\d+))?")
RUNNING_LINE = re.compile(r"\[DAG TEST\] running task <TaskInstance: (?P<dag>[\w.-]+?)\.(?P<task>[\w-]+) (?P<run>\S+) \[")
STATE_LINE = re.compile(r"Task instance state updated .*\bnew_state=(?P<state>\w+)")
LEVEL_LINE = re.compile(r"^\S+Z \[(?P<level>\w+)\s*\]\s*(?P<message>.*)$")
#: structlog's console line: the message, then `` [logger] key=value ...``.
LOGGER_FIELD = re.compile(r"\s+\[[\w.]+\](?:\s|$)")
RUN_END_LINE = re.compile(r"DagRun Finished: .*\bstate=(?P<state>\w+)")
#: An exception's last traceback line, e.g. ``ImportError: cannot import name ...``.
EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit|Interrupt|Failed)\w*(?::\s.*)?$")
MAX_ERROR_LINES = 6


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def task_label(task_id: str, map_index: int) -> str:
    return f"{task_id}[{map_index}]" if map_index >= 0 else task_id


@dataclass
class TaskEvent:
    """A task started (``kind`` "start") or ended ("end", with ``state``, ``seconds`` and the
    error lines it logged)."""

    kind: str
    task_id: str
    map_index: int
    at: datetime
    state: str | None = None
    seconds: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return task_label(self.task_id, self.map_index)

    @property
    def failed(self) -> bool:
        return self.kind == "end" and self.state not in ("success", "skipped")


@dataclass
class DagTestProgress:
    """Feed it ``airflow dags test`` output line by line; it returns the task events."""

    dag_id: str | None = None
    run_id: str | None = None
    run_state: str | None = None
    _current: TaskEvent | None = None
    _in_error: bool = False

    def feed(self, line: str) -> list[TaskEvent]:
        line = line.rstrip("\n")
        match = TASK_LINE.match(line)
        if match:
            self._in_error = False
            task_id, map_index = match["task"], int(match["map"] or -1)
            at = _time(match["at"])
            if match["event"] == "starting":
                self._current = TaskEvent("start", task_id, map_index, at)
                return [self._current]
            started = self._current if self._current and self._current.label == task_label(task_id, map_index) else None
            end = TaskEvent("end", task_id, map_index, at, state=started.state if started else None,
                            seconds=(at - started.at).total_seconds() if started else None,
                            errors=list(started.errors) if started else [])
            self._current = None
            return [end]
        if (running := RUNNING_LINE.search(line)) and self.run_id is None:
            self.dag_id, self.run_id = running["dag"], running["run"]
        if (ended := RUN_END_LINE.search(line)) is not None:
            self.run_state = ended["state"]
        level = LEVEL_LINE.match(line)
        if level:
            self._in_error = False
            if self._current is not None:
                if (state := STATE_LINE.search(line)) is not None:
                    self._current.state = state["state"]
                if level["level"] in ("error", "critical"):
                    self._current.errors.append(LOGGER_FIELD.split(level["message"], maxsplit=1)[0].strip())
                    self._in_error = True
        elif self._in_error and self._current is not None and EXCEPTION_LINE.match(line.strip()):
            self._current.errors.append(line.strip())  # the exception itself, from the traceback under the error line
        return []


# --------------------------------------------------------------------------- headline figures


def _pct(value) -> str:
    return f"{float(value):.4f}"


def _validate(v: dict) -> str:
    data = v["data"]
    model = (v.get("config") or {}).get("model")  # what 'auto' became
    return (f"{data['dataset']}: {data['n_train']} train / {data['n_val']} val / {data['n_test']} test samples, "
            + (f"{data['num_classes']} target(s), metric {data.get('metric', 'rmse')}" if data.get("task") == "regression"
               else f"{data['num_classes']} classes") + (f", model {model}" if isinstance(model, str) else ""))


def _create_study(v: list) -> str:
    return f"{len(v)} tuning worker(s)"


def _tune(v: dict) -> str:
    states = ", ".join(f"{n} {s.lower()}" for s, n in v.get("states", {}).items() if n)
    return f"{len(v['trials'])} trial(s) run ({states or 'none finished'}), {v.get('epochs_run', 0)} epochs"


def _tune_summary(v: dict) -> str:
    if v.get("best_value") is None:
        return f"{v.get('n_finished', 0)} finished trial(s), no best value"
    return f"best {v.get('metric', 'value')} {_pct(v['best_value'])} of {v.get('n_finished', '?')} finished trial(s)"


def _agent_plan(v: dict) -> str:
    train = v.get("train") or {}
    parts = [f"{train['epochs']} epochs" if train.get("epochs") else "",
             f"learning rate {float(train['learning_rate']):.2g}" if train.get("learning_rate") else "",
             "warm start" if v.get("warm_start") else "",
             f"{len(v['compress'])} compression candidate(s)" if isinstance(v.get("compress"), list) else ""]
    return "plan: train " + ", ".join(p for p in parts if p) if any(parts) else ""


def _agent_decide(v: dict) -> str:
    return f"decided: {v['action']}"


FRACTION_METRICS = ("accuracy", "auc", "f1_macro")


def _value(name: str, value) -> str:
    """A metric as a person reads it: fractions as percentages, errors and r2 as numbers."""
    return _pct(value) if name in FRACTION_METRICS else f"{value:.4g}"


def _primary(metrics: dict, prefix: str) -> str:
    """``"<metric> <value>"`` of the first ``<prefix><metric>`` in ``metrics`` (accuracy first)."""
    for name in (*FRACTION_METRICS, "rmse", "mae", "r2"):
        if metrics.get(prefix + name) is not None:
            return f"{name} {_value(name, metrics[prefix + name])}"
    return "no metric"


def _train(v: dict) -> str:
    metrics = v["metrics"]
    return f"val. {_primary(metrics, 'best_val_')}, {metrics.get('epochs_run', '?')} epochs"


def _candidates(v: list) -> str:
    return f"{len(v)} compression candidate(s)"


def _compress(v: dict) -> str:
    """The candidate's sizes and its validation score, which the evaluate task chooses on, beside its
    test score (only the test score, once, read as if a candidate that lost test samples had been
    chosen on them)."""
    metrics = v["metrics"]
    sizes = f"{v['candidate']}: {metrics['size_bytes']:,} bytes (gzip {metrics.get('gzip_size_bytes', 0):,})"
    val = _primary(metrics, "val_")
    if val == "no metric":
        return f"{sizes}, {_primary(metrics, 'test_')}"
    name = val.split(" ", 1)[0]  # the test score of the metric chosen on, not another one the step also measured
    test = metrics.get(f"test_{name}")
    return f"{sizes}, val. {val} (chosen on)" + (f", test {name} {_value(name, test)}" if test is not None else "")


def _evaluate(v: dict) -> str:
    gate = "blessed" if v.get("blessed") else "not blessed"
    candidate = (v.get("candidate") or {}).get("candidate")
    metric = v.get("metric") or "accuracy"
    value = v.get("test_metric", v.get(f"test_{metric}"))
    accuracy = f", test {metric} {_value(metric, value)}" if value is not None else ""
    return f"gate: {gate}" + (f" ({candidate}{accuracy})" if candidate else accuracy)


def _follow(v) -> str:
    return f"branch {v}"


def _deploy(v: dict) -> str:
    return f"{v['name']} version {v['version']} is champion" + ("" if v.get("created", True) else " (already registered)")


def _finish(v: dict) -> str:
    metric = v.get("metric") or "accuracy"
    value = v.get("test_metric", v.get("test_accuracy"))
    accuracy = f", test {metric} {_value(metric, value)}" if value is not None else ""
    return f"parent run {v.get('status', '?')}{accuracy}"


HEADLINES: dict[str, Callable] = {
    "validate_inputs": _validate, "create_study": _create_study, "tune": _tune, "tune_summary": _tune_summary,
    "agent_plan": _agent_plan, "agent_decide": _agent_decide, "train": _train, "compression_candidates": _candidates,
    "compress": _compress, "evaluate": _evaluate, "follow_plan": _follow, "deploy": _deploy, "finish": _finish,
    "retune_conf": lambda v: "conf of the follow-up run ready", "rollback": _deploy,
}


def headline(task_id: str, value) -> str:
    """The one figure worth printing for a task's XCom return value ("" when there is none)."""
    make = HEADLINES.get(task_id)
    if make is None or value is None:
        return ""
    try:
        return make(value)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return ""


class XComReader:
    """Reads a task instance's XCom ``return_value`` from the Airflow metadata DB (SQLite or
    PostgreSQL), read-only; every failure is ``None``."""

    def __init__(self, sql_alchemy_conn: str):
        self.url = sql_alchemy_conn
        self._engine = None

    def return_value(self, dag_id: str | None, run_id: str | None, task_id: str, map_index: int):
        if not dag_id or not run_id:
            return None
        try:
            from sqlalchemy import create_engine, text

            if self._engine is None:
                self._engine = create_engine(self.url)
            with self._engine.connect() as conn:
                row = conn.execute(text(
                    "SELECT value FROM xcom WHERE dag_id = :dag AND run_id = :run AND task_id = :task "
                    "AND map_index = :map AND key = 'return_value'"),
                    {"dag": dag_id, "run": run_id, "task": task_id, "map": map_index}).first()
        except Exception:  # noqa: BLE001 - a figure is optional; the run goes on
            return None
        if row is None:
            return None
        value = row[0]
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode(errors="replace")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return None
        return value

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def format_event(event: TaskEvent, figure: str = "") -> list[str]:
    """The lines to print for one event (an end of a failed task adds its error lines)."""
    clock = event.at.astimezone().strftime("%H:%M:%S")
    if event.kind == "start":
        return [f"[dlagent] {clock}  {'start':<12} {event.label}"]
    seconds = f"{event.seconds:6.1f} s" if event.seconds is not None else "      ?  "
    state = event.state or "ended"
    lines = [f"[dlagent] {clock}  {state:<12} {event.label:<24} {seconds}  {figure}".rstrip()]
    if event.failed:
        errors = [e for i, e in enumerate(event.errors) if e and (i == 0 or e != event.errors[i - 1])]
        lines += [f"[dlagent]           ! {error[:400]}" for error in errors[-MAX_ERROR_LINES:]]
    return lines


def dags_test_timing(stdout: str) -> dict:
    """Each task's span in a `dags test` log, and the one-off and idle costs that are Airflow's.

    ``tasks``: task id (``task[i]`` for a mapped instance) -> start and end (``[DAG TEST]
    starting`` .. ``end task``).
    ``execution_api_s``: `dags test` starts its in-process execution API when the first task first
    calls it, so the first task's span also holds that start (3-4 s on 2 cores): it is the first task's
    wait from ``starting`` to the API's ``Task started`` less the same wait of an ordinary task
    (the median of the others, about 0.01 s). It is Airflow's start-up, paid once per command.
    ``idle_passes``: Airflow's `dags test` loop sleeps 1 s when a pass finds no task to run (e.g.
    after an empty mapped ``tune``, which it marks skipped); counted, and left in the DAG run.
    """
    tasks: dict[str, dict] = {}
    waits, starting, idle = [], None, 0
    for line in stdout.splitlines():
        match = TASK_LINE.match(line)
        if match:
            stamp = _time(match["at"]).timestamp()
            name = match["task"] if int(match["map"] or -1) < 0 else f"{match['task']}[{match['map']}]"  # a mapped instance
            tasks.setdefault(name, {})["start" if match["event"] == "starting" else "end"] = stamp
            starting = stamp if match["event"] == "starting" else None
        elif starting is not None and " Task started " in line:
            waits.append(_time(line.split(" ", 1)[0]).timestamp() - starting)
            starting = None
        elif "No tasks to run" in line:
            idle += 1
    if not waits:
        raise ValueError("the `dags test` log has no execution API 'Task started' line after a task's start: Airflow's "
                         "log format changed; update dlagent_dev.progress.dags_test_timing")
    ordinary = sorted(waits[1:])[len(waits[1:]) // 2] if len(waits) > 1 else 0.0
    return {"tasks": tasks, "execution_api_s": max(0.0, waits[0] - ordinary), "idle_passes": idle}
