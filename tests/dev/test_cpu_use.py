"""The scale-out benchmark's CPU accounting: a process pinned to one CPU is counted on that CPU,
an unpinned one with everything else, and the figures are CPU seconds per second of the span."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from dlagent_dev.cpu_use import CpuUse, _cpu_list, label

from tests.conftest import required_on_ci

# CPU seconds, not wall seconds: under a parallel test run the pinned process shares its CPU.
# Then it says so and lives on until its stdin closes: a process is counted up to the last
# reading it was alive for, and under load one pass over /proc can take longer than a second.
BURN = "import time\nimport sys\nwhile time.process_time() < {seconds}:\n    pass\nprint('burnt', flush=True)\nsys.stdin.read()\n"


def _burn(seconds: float, cpu: int | None) -> subprocess.Popen:
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)], preexec_fn=pin,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _readings_after(use: CpuUse, moment: float, count: int, timeout: float = 30.0) -> None:
    """Wait until ``use`` has ``count`` readings whose pass began after ``moment``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        passes = [r for r in list(use.readings) if r.at > moment]  # a copy: the reader thread appends
        if len(passes) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} readings of /proc in {timeout} s")


def test_cpu_lists_are_read_as_the_kernel_writes_them():
    assert _cpu_list("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert _cpu_list("1") == (1,)


def test_a_pinned_busy_process_is_counted_on_its_cpu_and_an_unpinned_one_elsewhere():
    if len(os.sched_getaffinity(0)) < 2:
        required_on_ci("needs 2 CPUs: one to pin a process to, one more for an unpinned process")
    cpu = sorted(os.sched_getaffinity(0))[0]
    with CpuUse(interval=0.2) as use:
        start = time.time()
        pinned, free = _burn(2.0, cpu), _burn(1.0, None)
        assert pinned.stdout.readline() == free.stdout.readline() == "burnt\n"
        _readings_after(use, time.time(), 2)  # the second began after both burners were done
        for burner in (pinned, free):
            burner.stdin.close()
            assert burner.wait(30) == 0
        time.sleep(0.5)
        end = time.time()
    seen = use.between(start, end)
    span = seen["span_s"]
    assert 2.0 <= span <= end - start
    # the burner's 2 CPU seconds on its CPU (less what it used before its first reading, at
    # most one interval's worth); the unpinned one's 1 s with everything else
    assert seen["pinned"][cpu] * span >= 1.6
    assert seen["unpinned"] * span >= 0.8
    assert 0.0 < seen["cpu_busy"][cpu] <= 1.05
    # the unpinned burner by its command line ("python -c import time ..."), within the unpinned total
    assert seen["unpinned_by_command"]["import time"] * span >= 0.8
    assert sum(seen["unpinned_by_command"].values()) <= seen["unpinned"] + 0.01  # each rounded to 0.001


def test_processes_are_named_by_their_program_not_their_interpreter():
    assert label("/srv/.venv/bin/python3.11 /srv/.venv/bin/airflow scheduler --pid /tmp/x") == "airflow scheduler"
    assert label("/srv/.venv/bin/python /srv/.venv/bin/mlflow server --port 5000") == "mlflow server"
    assert label("postgres: postgres dlagent_x 127.0.0.1(4242) idle") == "postgres"
    assert label("/usr/bin/redis-server 127.0.0.1:6379") == "redis-server 127.0.0.1:6379"
    assert label("") == "?"


def test_a_span_without_two_readings_is_refused():
    with CpuUse(interval=5.0) as use:
        time.sleep(0.1)
    with pytest.raises(ValueError, match="fewer than 2 readings"):
        use.between(time.time() - 0.05, time.time())
