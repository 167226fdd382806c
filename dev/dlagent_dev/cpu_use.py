"""Who used the CPUs over a span of time: the processes pinned to one CPU each (the benchmark's
Celery workers, one per "machine") against everything else on this machine (Airflow's services,
PostgreSQL, Redis, the MLflow server, the benchmark itself).

Why: ``bench/scale_out.py`` pins each Celery worker to its own core so that one worker stands
for one machine, but on a 2-core machine the services cannot have a core of their own: with two
workers they take their CPU from the workers. Counting the CPU seconds each side used while the
trials ran separates what dlagent's coordination costs (trials per worker CPU-minute, one worker
against two) from what this machine's size costs (the workers' share of the cores).

A thread reads ``/proc`` every ``interval`` seconds: each process's user + system CPU seconds
(all its threads) and the CPUs it may run on, and each CPU's busy time from ``/proc/stat``.
Kernel threads are left out (they are pinned per CPU and are nobody's work). A process that is
born and ends between two readings is missed; one that ends is counted up to its last reading.
Linux only.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dlagent_dev.proctable import CLOCK_TICKS, read_process

TOP = 8  # the unpinned commands :meth:`CpuUse.between` names


@dataclass(frozen=True)
class Reading:
    """One pass over ``/proc`` at wall-clock time ``at``."""

    at: float
    # (pid, start ticks) -> (CPU seconds so far, the CPUs it may run on)
    processes: dict[tuple[int, int], tuple[float, tuple[int, ...]]]
    # CPU number -> busy seconds since boot (everything but idle and iowait)
    cpu_busy: dict[int, float]


def _cpu_list(text: str) -> tuple[int, ...]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.extend(range(int(low), int(high) + 1))
        elif part:
            cpus.append(int(part))
    return tuple(cpus)


def _read_process(pid: int) -> tuple[tuple[int, int], float, tuple[int, ...]] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is the state, the stat file's third field
    ppid, flags = int(fields[1]), int(fields[6])
    if pid == 2 or ppid == 2 or flags & 0x00200000:  # PF_KTHREAD: a kernel thread
        return None
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    allowed = next((line.split(":", 1)[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list:")), "")
    return (pid, int(fields[19])), cpu_s, _cpu_list(allowed)


def _cpu_busy() -> dict[int, float]:
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(t) for t in ticks]
            busy[int(name[3:])] = (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS  # minus idle, iowait
    return busy


def label(cmdline: str) -> str:
    """A short name for a process's command line: ``postgres`` for every PostgreSQL backend,
    else the program and its first words, the interpreter dropped (``airflow scheduler``,
    ``mlflow server``, ``celery worker``)."""
    words = cmdline.split()
    if not words:
        return "?"
    if words[0].startswith("postgres"):
        return "postgres"
    names = [os.path.basename(w) for w in words[:4] if not w.startswith("-")]
    if names and names[0].startswith("python"):
        names = names[1:]
    return " ".join(names[:2]) or os.path.basename(words[0])


def read_now(labels: dict | None = None) -> Reading:
    """One pass over ``/proc``; ``labels`` (key -> :func:`label`) is filled for processes seen
    for the first time (their command line is read once)."""
    processes = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            seen = _read_process(int(entry))
            if seen is not None:
                processes[seen[0]] = (seen[1], seen[2])
                if labels is not None and seen[0] not in labels:
                    info = read_process(int(entry))  # its command line, read once
                    labels[seen[0]] = label(info.cmdline if info else "")
    return Reading(at=time.time(), processes=processes, cpu_busy=_cpu_busy())


@dataclass
class CpuUse:
    """Reads ``/proc`` in a background thread while in its ``with`` block; :meth:`between` says
    who used the CPUs over any span inside it."""

    interval: float = 1.0
    readings: list[Reading] = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # (pid, start ticks) -> label()

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-use", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> CpuUse:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            reading = read_now(self.labels)
            with self._lock:
                self.readings.append(reading)
            if self._stop.wait(self.interval):
                return

    def between(self, start: float, end: float) -> dict:
        """CPU use from ``start`` to ``end`` (epoch seconds), counted between the first reading at
        or after ``start`` and the last at or before ``end``: in cores (CPU seconds per second),
        per single CPU that processes were pinned to (``pinned``, CPU number -> cores) and for
        every other process (``unpinned``; the :data:`TOP` biggest by :func:`label`,
        ``unpinned_by_command``), and each CPU's busy share (``cpu_busy``)."""
        with self._lock:
            inside = [r for r in self.readings if start <= r.at <= end]
        if len(inside) < 2:
            raise ValueError(f"fewer than 2 readings between {start} and {end}: the span is shorter than the interval ({self.interval} s)")
        first, last = inside[0], inside[-1]
        span = last.at - first.at
        latest: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}
        for reading in inside:
            latest.update(reading.processes)  # a process that ended keeps its last reading
        pinned: dict[int, float] = {}
        unpinned = 0.0
        by_label: dict[str, float] = {}
        for key, (cpu_s, allowed) in latest.items():
            used = cpu_s - first.processes.get(key, (0.0, ()))[0]  # born after the first reading: all of it
            if len(allowed) == 1:
                pinned[allowed[0]] = pinned.get(allowed[0], 0.0) + used
            else:
                unpinned += used
                name = self.labels.get(key, "?")
                by_label[name] = by_label.get(name, 0.0) + used
        top = sorted(by_label.items(), key=lambda item: -item[1])[:TOP]
        return {"span_s": round(span, 1),
                "pinned": {cpu: round(seconds / span, 3) for cpu, seconds in sorted(pinned.items())},
                "unpinned": round(unpinned / span, 3),
                "unpinned_by_command": {name: round(seconds / span, 3) for name, seconds in top if seconds > 0},
                "cpu_busy": {cpu: round((last.cpu_busy[cpu] - first.cpu_busy.get(cpu, 0.0)) / span, 3)
                             for cpu in sorted(last.cpu_busy)}}
