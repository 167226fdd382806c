"""What a test session or a benchmark left running, found and stopped.

:func:`find_leftovers` lists live processes by process group, by an environment mark inherited
from a session (:func:`begin_session`) and by a path in their command line; :func:`end_session`
is the check at the end of a test session or a benchmark, and :func:`stop_processes` stops what
was found (a whole group when all of it was found). Processes are started and groups stopped by
:mod:`dlagent_dev.procs`.

Linux only (it reads ``/proc``). Nothing here imports Airflow, MLflow or dlagent.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dlagent_dev.procs import started_groups, stop_group, wait_until
from dlagent_dev.proctable import CLOCK_TICKS, ProcInfo, ancestors, boot_time, environ, processes, read_process

#: Environment variable every process of a session inherits (:func:`begin_session`).
SESSION_ENV = "DLAGENT_SESSION_MARK"

#: Variables that name the checkout a process works for; another path there means another checkout.
CHECKOUT_ENV = ("AIRFLOW__CORE__DAGS_FOLDER", "DLAGENT_PROJECT_DIR")


def _is_init_like(info: ProcInfo | None) -> bool:
    """pid 1, or a per-user service manager that adopts orphans (``systemd --user``)."""
    return info is None or info.pid <= 1 or info.cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] in ("systemd", "init")


def find_leftovers(*, groups: Iterable[int] = (), env_mark: tuple[str, str] | None = None, path: str | Path | None = None,
                   started_after: float | None = None) -> list[ProcInfo]:
    """Live processes that belong to a run, except this process and its ancestors.

    A process belongs when it is in one of ``groups``; or its environment holds ``env_mark``
    (name, value); or its command line contains ``path``, it started after ``started_after`` (a
    ``time.time()``), its environment names no other run (``env_mark``'s name with another value)
    and no other checkout (:data:`CHECKOUT_ENV`), and it is this process's descendant or was
    orphaned (every process above it up to init matches too). The last rule finds what was
    started with an environment of its own without touching a person's own ``make run`` in the
    same checkout (its parent ``make`` is alive).
    """
    mine = ancestors()
    groups = set(groups)
    path = str(path) if path is not None else None
    after_ticks = None if started_after is None else (started_after - boot_time()) * CLOCK_TICKS
    table = {info.pid: info for info in processes()}
    envs: dict[int, dict] = {}

    def env_of(pid: int) -> dict:
        if pid not in envs:
            envs[pid] = environ(pid)
        return envs[pid]

    def marked(info: ProcInfo) -> bool:
        return env_mark is not None and env_of(info.pid).get(env_mark[0]) == env_mark[1]

    def path_match(info: ProcInfo) -> bool:
        if path is None or path not in info.cmdline:
            return False
        env = env_of(info.pid)
        if any(env.get(name) and not env[name].startswith(path) for name in CHECKOUT_ENV):
            return False  # another checkout's (e.g. a second clone that uses this one's interpreter)
        value = env.get(env_mark[0]) if env_mark is not None else None
        return value is None or value == env_mark[1]

    def by_path(info: ProcInfo) -> bool:
        if not path_match(info) or (after_ticks is not None and info.start_ticks < after_ticks):
            return False
        parent = table.get(info.ppid)
        seen = set()
        while not _is_init_like(parent) and parent.pid not in seen:
            if parent.pid in mine:
                return True  # below this process
            if not (path_match(parent) or marked(parent) or parent.pgid in groups):
                return False  # someone else's (a live `make` above it)
            seen.add(parent.pid)
            parent = table.get(parent.ppid)
        return True  # orphaned

    return [info for info in table.values()
            if info.pid not in mine and (info.pgid in groups or marked(info) or by_path(info))]


def stop_processes(found: Iterable[ProcInfo], *, grace: float = 10.0) -> list[ProcInfo]:
    """Stop what :func:`find_leftovers` found: a whole process group when every process in it
    was found, each process on its own otherwise. Returns what survived."""
    found = list(found)
    keys = {(p.pid, p.start_ticks) for p in found}
    live = processes()
    members: dict[int, list[ProcInfo]] = {}
    for info in live:
        members.setdefault(info.pgid, []).append(info)
    own = {os.getpgrp(), 0, 1}
    whole = {pgid for pgid in {p.pgid for p in found} - own
             if all((m.pid, m.start_ticks) in keys for m in members.get(pgid, []))}
    survivors = []
    for pgid in whole:
        survivors += stop_group(pgid, grace=grace)
    singles = [p for p in found if p.pgid not in whole]

    def alive(p: ProcInfo) -> bool:
        now = read_process(p.pid)
        return now is not None and now.alive and now.start_ticks == p.start_ticks

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        left = [p for p in singles if alive(p)]
        for info in left:
            try:
                os.kill(info.pid, sig)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(alive(p) for p in singles), wait if left else 0, None)
    return survivors + [p for p in singles if alive(p)]


@dataclass(frozen=True)
class Session:
    """A test session or benchmark: the processes it starts inherit ``SESSION_ENV=token``."""

    token: str
    started: float
    path: str | None

    def leftovers(self) -> list[ProcInfo]:
        return find_leftovers(groups=started_groups(), env_mark=(SESSION_ENV, self.token), path=self.path,
                              started_after=self.started - 1.0)


def begin_session(path: str | Path | None = None) -> Session:
    """Mark this process's environment, so every process started from now on can be found.

    ``path`` (usually the checkout) is also looked for in command lines, for processes started
    with an environment of their own.
    """
    session = Session(token=uuid.uuid4().hex, started=time.time(), path=str(path) if path is not None else None)
    os.environ[SESSION_ENV] = session.token
    return session


def report(found: Iterable[ProcInfo], what: str = "processes left running") -> str:
    found = sorted(found, key=lambda p: (p.pgid, p.pid))
    lines = [f"{len(found)} {what}:"] + [f"  {p.describe()}" for p in found]
    return "\n".join(lines)


def end_session(session: Session, *, stop_them: bool = True) -> list[ProcInfo]:
    """What the session left running (listed before they are stopped, when ``stop_them``)."""
    found = session.leftovers()
    if found and stop_them:
        stop_processes(found)
    return found
