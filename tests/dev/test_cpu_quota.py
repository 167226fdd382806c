"""The scale-out benchmark's CPU quota: a process in a quota group, and what it starts, get at
most that share of a CPU; the group goes once its processes have; where this machine has no
writable cpu cgroup, asking for one is refused with what to do instead."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from dlagent_dev import cpu_quota

# A parent that starts a child and both spin for 1.5 s of wall time: CPU seconds over wall
# seconds is the share of a CPU the two got together.
SPIN = ("import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time\\nt = time.time()\\nwhile time.time() - t < 1.5: pass'])\n"
        "t = time.time()\n"
        "while time.time() - t < 1.5:\n    pass\n"
        "child.wait()\n"
        "import resource\n"
        "usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]\n"
        "print(sum(u.ru_utime + u.ru_stime for u in usage))\n")


def test_a_quota_caps_a_process_and_its_children_together():
    if not cpu_quota.supported():
        with pytest.raises(RuntimeError, match="no writable cpu cgroup"):
            cpu_quota.create("dlagent-test", 0.25)
        return
    group = cpu_quota.create("dlagent-test", 0.25)
    try:
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", SPIN], preexec_fn=lambda: cpu_quota.join(group), capture_output=True, text=True,
                             check=True, timeout=60)
        wall = time.monotonic() - started
        share = float(out.stdout) / wall
        assert share <= 0.25 * 1.3, f"{out.stdout.strip()} CPU s in {wall:.2f} s: a share of {share:.2f}, the quota is 0.25"
        assert float(out.stdout) > 0.1  # it did run
    finally:
        cpu_quota.remove(group)
    assert not group.exists()


@pytest.mark.parametrize("cores", [0, -1, 10_000])
def test_a_share_outside_the_machine_is_refused(cores):
    with pytest.raises(ValueError, match="cores must be in"):
        cpu_quota.create("dlagent-test", cores)
