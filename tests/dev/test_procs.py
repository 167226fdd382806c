"""dlagent_dev.procs: a process group is stopped as a whole, and what a run left is found.

Every test here starts real processes (a child that starts a grandchild, as ``mlflow server``
starts uvicorn workers) and checks with ``/proc`` that none is left afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dlagent_dev import leftovers, procs

# A process that starts a grandchild in its own group, prints both pids and sleeps.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""
# The same, but it ignores SIGTERM (and so does its grandchild).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""
# A leader that starts a grandchild and exits at once: the group lives on without it.
LEADER_EXITS = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(child.pid, flush=True)
"""


def _alive(pid: int) -> bool:
    info = procs.read_process(pid)
    return info is not None and info.alive


def _start(code: str, **kwargs) -> tuple[subprocess.Popen, int]:
    process = procs.start([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kwargs)
    grandchild = int(process.stdout.readline())
    return process, grandchild


@pytest.fixture
def cleanup():
    """Groups a test started: stopped afterwards even when an assertion failed."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        procs.stop_group(pgid, grace=2)


def test_killing_the_leader_alone_leaves_its_children_and_stop_group_ends_them(cleanup):
    process, grandchild = _start(PARENT)
    cleanup.append(process.pid)
    assert {p.pid for p in procs.group_members(process.pid)} == {process.pid, grandchild}
    process.kill()  # what the old procs fixture did
    process.wait()
    assert _alive(grandchild), "the grandchild outlives its killed parent (issue 21)"
    assert procs.stop_group(process.pid, grace=5) == []
    assert not _alive(grandchild) and procs.group_members(process.pid) == []


def test_stop_group_terms_the_whole_group_and_waits_until_it_is_empty(cleanup):
    process, grandchild = _start(PARENT)
    cleanup.append(process.pid)
    started = time.monotonic()
    assert procs.stop_group(process, grace=10) == []
    assert time.monotonic() - started < 5  # SIGTERM was enough
    assert process.returncode == -signal.SIGTERM  # and our child was waited for: no zombie
    assert not _alive(grandchild)


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_period(cleanup):
    process, grandchild = _start(STUBBORN)
    cleanup.append(process.pid)
    started = time.monotonic()
    assert procs.stop_group(process, grace=1.5) == []
    assert 1.4 <= time.monotonic() - started < 10
    assert process.returncode == -signal.SIGKILL and not _alive(grandchild)


def test_a_group_whose_leader_already_exited_is_still_stopped(cleanup):
    process, grandchild = _start(LEADER_EXITS)
    cleanup.append(process.pid)
    process.wait(timeout=30)
    assert _alive(grandchild) and [p.pid for p in procs.group_members(process.pid)] == [grandchild]
    assert procs.stop_group(process, grace=5) == []
    assert not _alive(grandchild)


def test_a_zombie_is_not_a_live_member():
    process = procs.start([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while (info := procs.read_process(process.pid)) is not None and info.state != "Z":  # exited, not yet waited for
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert procs.group_members(process.pid) == []
    assert process.pid not in {p.pid for p in procs.processes()}
    assert procs.stop_group(process, grace=1) == []  # nothing to signal; it is reaped
    assert process.returncode == 0


def test_stop_group_refuses_this_processs_own_group():
    with pytest.raises(ValueError, match="own"):
        procs.stop_group(os.getpgrp())


def test_a_process_in_our_group_is_stopped_with_its_descendants_not_the_group():
    process = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)  # pytest's group
    grandchild = int(process.stdout.readline())
    try:
        assert procs.read_process(process.pid).pgid == os.getpgrp()
        assert procs.stop(process, grace=5) == []  # not its group: that is pytest's
        assert not _alive(grandchild) and process.returncode is not None
    finally:
        for pid in (process.pid, grandchild):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_started_groups_are_recorded_and_leftovers_found_by_group_mark_and_path(cleanup, tmp_path):
    mark = ("DLAGENT_TEST_PROCS_MARK", uuid.uuid4().hex)
    plain, plain_child = _start(PARENT)
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env={**os.environ, mark[0]: mark[1]},
                              start_new_session=True)
    other_run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(tmp_path)],
                                 env={**os.environ, mark[0]: "another run"}, start_new_session=True)
    cleanup.extend([plain.pid, marked.pid, other_run.pid])
    assert plain.pid in procs.started_groups() and marked.pid not in procs.started_groups()

    by_group = {p.pid for p in leftovers.find_leftovers(groups=[plain.pid])}
    assert by_group == {plain.pid, plain_child}
    assert {p.pid for p in leftovers.find_leftovers(env_mark=mark)} == {marked.pid}
    # by path: our descendants whose command line holds it, never another run's (its mark differs)
    by_path = {p.pid for p in leftovers.find_leftovers(env_mark=mark, path=str(tmp_path), started_after=time.time() - 60)}
    assert other_run.pid not in by_path
    assert os.getpid() not in {p.pid for p in leftovers.find_leftovers(path=sys.executable)}  # never this process
    found = leftovers.find_leftovers(groups=[plain.pid], env_mark=mark)
    assert leftovers.stop_processes(found, grace=5) == []
    assert not any(_alive(pid) for pid in (plain.pid, plain_child, marked.pid))
    assert _alive(other_run.pid)  # not found, not touched


def test_an_orphan_is_found_by_path_but_not_a_process_whose_parent_is_someone_elses(cleanup, tmp_path):
    """Without a session mark: an orphan (its parent exited) whose command line holds the checkout's
    path is a leftover; a process under a live parent that is not ours (a person's own ``make run``
    in the same checkout: ``make`` above it) is not."""
    env = {k: v for k, v in os.environ.items() if k != leftovers.SESSION_ENV}
    sleeper = f"{sys.executable} -c 'import time; time.sleep(300)' {tmp_path}"
    spawner = f"""
import os, subprocess, sys
orphan = subprocess.Popen({sleeper!r}, shell=True, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
foreign = subprocess.Popen(["sh", "-c", 'eval "$SLEEPER"; true'], env={{**os.environ, "SLEEPER": {sleeper!r}}},
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(orphan.pid, foreign.pid, flush=True)
"""
    out = subprocess.run([sys.executable, "-c", spawner], env=env, capture_output=True, text=True, check=True, timeout=60)
    orphan, foreign = (int(x) for x in out.stdout.split())
    cleanup.extend([orphan, foreign])
    deadline = time.monotonic() + 30
    while not (kids := procs.descendants(foreign)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    project = str(Path(procs.__file__).resolve().parents[2])
    found = {p.pid for p in leftovers.find_leftovers(path=project, started_after=time.time() - 60)}
    assert orphan in found  # `sh -c` exec'ed the sleeper: it is the orphan itself
    assert foreign not in found and kids[0].pid not in found  # its parent `sh` is alive and is not ours


def test_stop_orphans_stops_what_a_killed_owner_left_and_refuses_while_the_owner_lives(tmp_path):
    tag = f"test:{tmp_path}"
    owner_code = f"""
import subprocess, sys, time
from dlagent_dev import procs
service = procs.start([sys.executable, "-c", {PARENT!r}], tag={tag!r}, stdout=subprocess.PIPE, text=True)
print(service.pid, service.stdout.readline().strip(), flush=True)
time.sleep(300)
"""
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    service, grandchild = (int(x) for x in owner.stdout.readline().split())
    try:
        assert {p.pid for p in procs.tagged(tag)} == {service, grandchild}
        stopped, live_owner = procs.stop_orphans(tag)
        assert stopped == [] and live_owner.split(":")[0] == str(owner.pid)  # still in use: untouched
        assert _alive(service)
        owner.kill()  # SIGKILL: the owner cannot stop its service
        owner.wait()
        assert _alive(service) and _alive(grandchild)
        stopped, live_owner = procs.stop_orphans(tag)
        assert live_owner is None and {p.pid for p in stopped} == {service, grandchild}
        assert procs.tagged(tag) == [] and not _alive(grandchild)
    finally:
        procs.stop_group(owner.pid, grace=2)
        procs.stop_group(service, grace=2)
