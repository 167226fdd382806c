"""The process table as ``/proc`` shows it: each process's group, parent, start time, command line
and environment; who descends from whom. Linux only; used by :mod:`dlagent_dev.procs`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcInfo:
    """One process as ``/proc/<pid>/stat`` and ``cmdline`` show it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start_ticks: int
    cmdline: str

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie has ended; only its parent's wait() is missing

    @property
    def age_s(self) -> float:
        return max(0.0, uptime() - self.start_ticks / CLOCK_TICKS)

    def describe(self) -> str:
        return f"pid {self.pid} (group {self.pgid}, parent {self.ppid}, {self.age_s:.0f} s old): {self.cmdline[:300]}"


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return time.time() - uptime()


def read_process(pid: int) -> ProcInfo | None:
    """The process ``pid``, or ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm_end = stat.rindex(")")  # the command name may hold spaces and parentheses
    fields = stat[comm_end + 2:].split()
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{stat[stat.index('(') + 1:comm_end]}]"
    return ProcInfo(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]), state=fields[0],
                    start_ticks=int(fields[19]), cmdline=cmdline)


def processes() -> list[ProcInfo]:
    """Every live process (zombies left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_process(int(entry))
            if info is not None and info.alive:
                found.append(info)
    return found


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (empty when it is gone or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    return dict(pairs)


def ancestors(pid: int | None = None) -> set[int]:
    """``pid`` (default: this process) and every process above it."""
    pid = os.getpid() if pid is None else pid
    chain = set()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        info = read_process(pid)
        if info is None:
            break
        pid = info.ppid
    return chain


def descendants(pid: int) -> list[ProcInfo]:
    """Live processes below ``pid`` (children, their children, ...)."""
    children: dict[int, list[ProcInfo]] = {}
    for info in processes():
        children.setdefault(info.ppid, []).append(info)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def group_members(pgid: int) -> list[ProcInfo]:
    """Live processes of process group ``pgid``."""
    return [p for p in processes() if p.pgid == pgid]


def owner_token(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of a process: names it even after its pid is reused."""
    info = read_process(os.getpid() if pid is None else pid)
    return f"{info.pid}:{info.start_ticks}" if info else ""


def owner_alive(token: str) -> bool:
    """Whether the process an :func:`owner_token` names still runs."""
    pid, _, ticks = token.partition(":")
    if not pid.isdigit():
        return False
    info = read_process(int(pid))
    return info is not None and info.alive and str(info.start_ticks) == ticks
