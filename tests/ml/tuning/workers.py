"""Shared helpers of the tuning tests: settings, and worker processes as a mapped Airflow task runs them.

Used by the tuning tests and by the reliability suite's fault tests (a worker killed mid-trial).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dlagent.ml import tuning
from dlagent.ml.config import TrainConfig

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "units": {"type": "int", "low": 16, "high": 64, "step": 16},
}
BASE = {"model": "mlp", "epochs": 3, "early_stopping_patience": 0, "seed": 0}
HEARTBEAT, GRACE = 1, 5  # a live trial whose beat stalls under load (2 cores, 3 test workers) for 4 s still counts as alive
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def run_worker(url: str, study_name: str, splits, base: TrainConfig, n_trials: int, *, client=None, callbacks=(), **settings) -> dict:
    """One in-process worker with the tests' quick heartbeat (``settings``: other WorkerSettings fields)."""
    settings.setdefault("heartbeat_interval", HEARTBEAT)
    settings.setdefault("grace_period", GRACE)
    worker = tuning.WorkerSettings(storage_url=url, study_name=study_name, base_config=base, n_trials=n_trials, **settings)
    return tuning.run_worker(worker, splits, client=client, callbacks=callbacks)


# A worker process, as a mapped Airflow task would run it. With "stall_in_fit": N, the N-th
# model fit of this process writes a marker after its first epoch and then hangs inside the
# trial (heartbeat still beating) until the test kills the process.
WORKER_SCRIPT = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
import keras
from dlagent.ml import tuning
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import load_dataset

splits = load_dataset("digits", seed=0, max_samples=600)
callbacks = []
if args.get("stall_in_fit"):
    class StallInFit(keras.callbacks.Callback):
        fits = 0
        def on_train_begin(self, logs=None):
            type(self).fits += 1
        def on_epoch_end(self, epoch, logs=None):
            if type(self).fits == args["stall_in_fit"]:
                open(args["marker"], "w").close()
                time.sleep(600)
    callbacks.append(StallInFit())
open(args["ready"], "w").close()
while args.get("go") and not os.path.exists(args["go"]):
    time.sleep(0.05)
settings = tuning.WorkerSettings(
    storage_url=args["url"], study_name=args["study"], base_config=TrainConfig(**args["base"]), n_trials=args["n_trials"],
    heartbeat_interval=args["heartbeat"], grace_period=args["grace"], worker_index=args["index"], timeout_s=300,
)
result = tuning.run_worker(settings, splits, callbacks=callbacks)
print("RESULT " + json.dumps(result))
"""


def start_worker(tmp_path: Path, url: str, study: str, n_trials: int, index: int, **extra) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    args = {"url": url, "study": study, "n_trials": n_trials, "index": index, "base": BASE,
            "heartbeat": HEARTBEAT, "grace": GRACE, "ready": str(tmp_path / f"ready-{index}"), **extra}
    out = open(tmp_path / f"worker-{index}.log", "w")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    # its own process group: the procs fixture ends the whole group
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True)


def wait_for(condition, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"a worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def finish(proc: subprocess.Popen, tmp_path: Path, index: int) -> dict:
    proc.wait(timeout=300)
    output = (tmp_path / f"worker-{index}.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def by_state(trials) -> dict:
    return {state: sum(1 for t in trials if t.state.name == state) for state in STATES}
