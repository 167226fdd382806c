"""A CPU quota for a process and everything it starts (the Linux ``cpu`` cgroup controller).

Why: ``bench/scale_out.py`` pins each Celery worker to its own CPU so that one worker stands for
one machine. On a 2-core machine the Airflow and MLflow services (about 0.3 core) then take their
CPU from the workers' cores, so two workers get less of a machine each than one worker does, and
the speed-up measures that, not the coordination. A quota makes each worker a machine of
``cores`` cores (its pinned CPU, at most that share of it) and leaves the rest of every CPU to
the services, as a deployment with the services on their own machine would.

cgroup v1 (``/sys/fs/cgroup/cpu``) and v2 (``/sys/fs/cgroup``, ``cpu.max``) are both handled; a
process joins its group in ``preexec_fn`` (before ``exec``), so the worker's pool and task
processes inherit it. :func:`supported` says whether this machine lets us write one.
"""

from __future__ import annotations

import os
from pathlib import Path

PERIOD_US = 100_000  # the scheduler's accounting period; the quota is ``cores`` of it
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


def _root() -> tuple[Path, bool] | None:
    """``(folder new groups go in, is cgroup v2)``, or None where neither can be written."""
    if (_V1 / "cpu.cfs_quota_us").exists() and os.access(_V1, os.W_OK):
        return _V1, False
    if (_V2 / "cgroup.controllers").exists() and os.access(_V2, os.W_OK) and "cpu" in (_V2 / "cgroup.controllers").read_text().split():
        return _V2, True
    return None


def supported() -> bool:
    return _root() is not None


def create(name: str, cores: float) -> Path:
    """A new group named ``name`` whose processes together use at most ``cores`` CPUs."""
    if not 0 < cores <= os.cpu_count():
        raise ValueError(f"cores must be in (0, {os.cpu_count()}], got {cores}")
    found = _root()
    if found is None:
        raise RuntimeError("no writable cpu cgroup (/sys/fs/cgroup/cpu or a v2 /sys/fs/cgroup with the cpu controller): "
                           "run without a CPU quota")
    root, v2 = found
    group = root / f"{name}-{os.getpid()}"
    group.mkdir(exist_ok=True)
    quota = int(cores * PERIOD_US)
    if v2:
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    return group


def join(group: Path) -> None:
    """Move the calling process into ``group`` (call it in the child, before ``exec``)."""
    (group / "cgroup.procs").write_text(str(os.getpid()))


def remove(group: Path) -> None:
    """Delete ``group`` once its processes have ended (a group with a live process stays)."""
    try:
        group.rmdir()
    except OSError:
        pass
