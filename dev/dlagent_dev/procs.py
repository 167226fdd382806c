"""Processes the tooling starts, how they end, and what is left when they did not.

A long-lived service (``mlflow server``, ``airflow scheduler``, ...) starts helpers of its own:
uvicorn workers, a job runner, huey consumers, task processes. Killing the service's own
process leaves them running, reparented. So everything here works on **process groups**:

* :func:`start` runs a command in a new session, hence its own process group, and records the
  group (:func:`started_groups`);
* :func:`stop_group` sends SIGTERM to the whole group, waits until no process of it is left
  (a zombie does not count), then SIGKILL and waits again;
* :mod:`dlagent_dev.leftovers` finds and stops what a test session or a benchmark left running;
* a *tag* lets a later run find the services an earlier, killed one left behind
  (:func:`stop_orphans`): the groups started under it are recorded in a small file (by pgid and
  start time), and every process started under it carries it in its environment
  (``DLAGENT_PROC_TAG``, the starting process in ``DLAGENT_PROC_OWNER``). Both are needed:
  Airflow's processes rename themselves (``setproctitle``), which wipes what
  ``/proc/<pid>/environ`` shows, and a process may leave its group.

Linux only (it reads ``/proc``). Nothing here imports Airflow, MLflow or dlagent.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from dlagent_dev.proctable import (  # the process table: what /proc says
    ProcInfo,
    ancestors,
    descendants,
    environ,
    group_members,
    owner_alive,
    owner_token,
    processes,
    read_process,
)

#: Environment variable naming what a started service belongs to (e.g. ``stack:/path/to/home``).
TAG_ENV = "DLAGENT_PROC_TAG"
#: Environment variable naming the process that started it: ``<pid>:<start time in ticks>``.
OWNER_ENV = "DLAGENT_PROC_OWNER"
_started_groups: set[int] = set()
_record_lock = threading.Lock()
_group_tags: dict[int, str] = {}  # groups started here under a tag: stop_group forgets them in the record


# --------------------------------------------------------------------------- starting


def start(command: list[str], *, tag: str | None = None, **popen_kwargs) -> subprocess.Popen:
    """Start ``command`` in a new session (its own process group) and record the group.

    ``tag`` marks it and every process it starts (environment ``DLAGENT_PROC_TAG``, plus
    ``DLAGENT_PROC_OWNER``: this process), so :func:`stop_orphans` finds them if this process
    dies without stopping them. Other keyword arguments go to :class:`subprocess.Popen`.
    """
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    if tag is not None:
        env = dict(popen_kwargs.pop("env", None) or os.environ)
        env.update({TAG_ENV: tag, OWNER_ENV: owner_token()})
        popen_kwargs["env"] = env
    process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
    register_group(process.pid)
    if tag is not None:
        _record_group(tag, process.pid)
        _group_tags[process.pid] = tag
    return process


def register_group(pgid: int) -> None:
    """Remember a process group started here (the session check looks for what is left of it)."""
    _started_groups.add(int(pgid))


def started_groups() -> frozenset[int]:
    return frozenset(_started_groups)


# --------------------------------------------------------------------------- stopping


def _reap(process: subprocess.Popen | None) -> None:
    if process is not None:
        process.poll()


def wait_until(gone, timeout: float, process: subprocess.Popen | None) -> bool:
    """Poll ``gone()`` until it is true or ``timeout`` seconds pass, reaping ``process`` (our child) meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(process)  # our own child is a zombie until waited for
        if gone():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(target: subprocess.Popen | int, *, grace: float = 10.0, sig: int = signal.SIGTERM,
               kill_wait: float = 10.0) -> list[ProcInfo]:
    """End process group ``target`` (a :class:`~subprocess.Popen` that leads its group, or a pgid).

    Sends ``sig`` (SIGTERM) to the whole group and waits up to ``grace`` seconds until no process
    of it is left, then SIGKILL and up to ``kill_wait`` seconds more. Returns what is still alive
    (normally nothing). Refuses this process's own group, which would end the caller.
    """
    process = target if isinstance(target, subprocess.Popen) else None
    pgid = process.pid if process is not None else int(target)
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to stop process group {pgid}: it is this process's own (or init's)")
    gone = lambda: not group_members(pgid)  # noqa: E731
    if not gone():
        _signal_group(pgid, sig)
        if not wait_until(gone, grace, process):
            _signal_group(pgid, signal.SIGKILL)
            wait_until(gone, kill_wait, process)
    if process is not None:
        try:
            process.wait(timeout=kill_wait)
        except subprocess.TimeoutExpired:
            pass
    left = group_members(pgid)
    if not left and pgid in _group_tags:
        _forget_stopped(_group_tags.pop(pgid))
    return left


def stop_tree(process: subprocess.Popen, *, grace: float = 10.0, kill_wait: float = 10.0) -> list[ProcInfo]:
    """End a process that shares its group with others (e.g. with pytest) and everything below it.

    Once it has exited (and was waited for) its pid may be reused and what it started is no longer
    below it: nothing is done then (the session check finds such orphans).
    """
    if process.poll() is not None:
        return []
    members = [info for info in (read_process(process.pid), *descendants(process.pid)) if info is not None and info.alive]
    keys = {(m.pid, m.start_ticks) for m in members}

    def alive() -> list[ProcInfo]:
        return [info for pid, ticks in keys if (info := read_process(pid)) and info.alive and info.start_ticks == ticks]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        left = alive()
        if not left:
            break
        for info in left:
            try:
                os.kill(info.pid, sig)
            except ProcessLookupError:
                pass
        wait_until(lambda: not alive(), wait, process)
    try:
        process.wait(timeout=kill_wait)
    except subprocess.TimeoutExpired:
        pass
    return alive()


def stop(process: subprocess.Popen, *, leads_group: bool | None = None, grace: float = 10.0) -> list[ProcInfo]:
    """End ``process`` and what it started: its whole group when it leads one, else its tree."""
    if leads_group is None:
        info = read_process(process.pid)
        leads_group = info is not None and info.pgid == process.pid
    if leads_group:
        return stop_group(process, grace=grace)
    return stop_tree(process, grace=grace)


# --------------------------------------------------------------------------- tagged services


def record_path(tag: str) -> Path:
    """Where the groups started under ``tag`` are recorded (this user's temporary folder)."""
    digest = hashlib.sha1(tag.encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"dlagent-procs-{os.getuid()}" / f"{digest}.json"


def _read_record(tag: str) -> dict:
    try:
        data = json.loads(record_path(tag).read_text())
    except (OSError, ValueError):
        return {"tag": tag, "owner": "", "groups": {}}
    return data if isinstance(data, dict) and data.get("tag") == tag else {"tag": tag, "owner": "", "groups": {}}


def _write_record(data: dict) -> None:
    path = record_path(data["tag"])
    if not data["groups"]:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _live_recorded_groups(data: dict) -> list[int]:
    """The recorded groups that still have a live process and are still ours: a recorded leader
    that is alive must have its recorded start time (else its pid was reused); while any process
    is in a group, Linux does not hand its number out as a new pid."""
    live = []
    for pgid, ticks in data.get("groups", {}).items():
        pgid = int(pgid)
        leader = read_process(pgid)
        if leader is not None and leader.alive and leader.start_ticks != ticks:
            continue
        if group_members(pgid):
            live.append(pgid)
    return live


def _record_group(tag: str, pgid: int) -> None:
    info = read_process(pgid)
    with _record_lock:
        data = _read_record(tag)
        kept = set(_live_recorded_groups(data))
        groups = {str(g): t for g, t in data.get("groups", {}).items() if int(g) in kept}
        groups[str(pgid)] = info.start_ticks if info else 0
        if not owner_alive(data.get("owner", "")):
            data["owner"] = owner_token()
        _write_record({**data, "groups": groups})


def _forget_stopped(tag: str) -> None:
    """Drop the record's groups that have no live process left (the file goes with the last)."""
    with _record_lock:
        data = _read_record(tag)
        left = set(_live_recorded_groups(data))
        _write_record({**data, "groups": {g: t for g, t in data.get("groups", {}).items() if int(g) in left}})


def tagged(tag: str) -> list[ProcInfo]:
    """Live processes started by :func:`start` with ``tag`` whose environment still shows it."""
    return [p for p in processes() if environ(p.pid).get(TAG_ENV) == tag]


def tagged_groups(tag: str) -> list[int]:
    """Process groups that belong to ``tag``: recorded when started, or holding a tagged process."""
    return sorted(set(_live_recorded_groups(_read_record(tag))) | {p.pgid for p in tagged(tag)})


def stop_orphans(tag: str) -> tuple[list[ProcInfo], str | None]:
    """Stop what an earlier run left under ``tag`` when that run is gone (killed): every process
    group recorded for the tag or holding a tagged process, each as a whole.

    Returns ``(stopped, None)``; or ``([], owner)`` without stopping anything when the run that
    started them (``owner``, ``pid:ticks``) is still alive: it owns them.
    """
    me = owner_token()
    mine = ancestors()
    with _record_lock:
        data = _read_record(tag)
        owners = {data.get("owner", "")} | {environ(p.pid).get(OWNER_ENV, "") for p in tagged(tag)}
        for owner in owners:
            if owner and owner != me and owner_alive(owner):
                return [], owner
        own_groups = {os.getpgrp(), 0, 1} | {info.pgid for pid in mine if (info := read_process(pid))}
        groups = [g for g in tagged_groups(tag) if g not in own_groups]
        stopped = [p for g in groups for p in group_members(g)]
        for pgid in groups:
            stop_group(pgid, grace=10.0)
        left = set(_live_recorded_groups(data))
        _write_record({**data, "groups": {g: t for g, t in data.get("groups", {}).items() if int(g) in left}})
    return stopped, None
