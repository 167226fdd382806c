"""The compute the agent can see from a task: this worker's CPUs, load and free memory.

Free Airflow pool slots are not readable from an Airflow 3 task (the Task SDK has no pool API
and tasks have no metadata-database access), so resources are the worker's own.
"""

from __future__ import annotations

import math
import os

# --------------------------------------------------------------------------- resources


def measure_resources() -> dict:
    """CPUs usable by this process, the 1-minute load, free CPUs and free memory (GiB)."""
    try:
        cpu_count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu_count = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    memory_free_gb = None
    try:
        import psutil

        memory_free_gb = round(psutil.virtual_memory().available / 2**30, 2)
        if load is None:
            load = psutil.getloadavg()[0]
    except Exception:  # noqa: BLE001 - psutil is optional
        pass
    cpus_free = max(0, int(cpu_count - math.ceil(load))) if load is not None else cpu_count
    return {"cpu_count": cpu_count, "load_1m": round(load, 2) if load is not None else None,
            "cpus_free": cpus_free, "memory_free_gb": memory_free_gb}
