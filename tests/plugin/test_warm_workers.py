"""Warm workers (dlagent.preload, dlagent.celery_config, dlagent.executors): Airflow's Celery
configuration plus one import, TensorFlow loaded in the worker before it forks, forked processes
that still train, and task processes that die with their supervisor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from dlagent.celery_config import CELERY_CONFIG, PRELOAD_MODULE
from dlagent_dev import procs as dev_procs

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_the_config_is_airflows_default_plus_the_preload():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    assert {k: v for k, v in CELERY_CONFIG.items() if k != "imports"} == {k: v for k, v in DEFAULT_CELERY_CONFIG.items() if k != "imports"}
    assert CELERY_CONFIG["imports"][-1] == PRELOAD_MODULE == "dlagent.preload"


def test_the_config_module_imports_nothing_heavy():
    """The scheduler and the API server import it too: TensorFlow must stay out of them."""
    out = subprocess.run([sys.executable, "-c", "import sys, dlagent.celery_config; print(sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


FORK_AND_TRAIN = r"""
import os, sys
import dlagent.preload
pids = []
for site in range(2):
    pid = os.fork()
    if pid == 0:
        import numpy as np, keras, tensorflow as tf
        rng = np.random.default_rng(site)
        x = rng.normal(size=(512, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy", metrics=["accuracy"])
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512, seed=site).batch(32).prefetch(tf.data.AUTOTUNE)
        accuracy = model.fit(data, epochs=10, verbose=0).history["accuracy"][-1]
        print("site", site, "accuracy", accuracy, flush=True)
        os._exit(0 if accuracy > 0.9 else 3)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
import tensorflow as tf
tf.constant(1.0) + 1  # now the runtime exists in this process: forking from here on is what the check refuses
try:
    dlagent.preload.check_fork_safe()
    refused = False
except RuntimeError:
    refused = True
print("RESULT", codes, refused)
"""


def test_processes_forked_after_the_preload_train_and_a_started_runtime_is_refused():
    out = subprocess.run([sys.executable, "-c", FORK_AND_TRAIN], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "RESULT [0, 0] True"


def _maps_tensorflow(pid: int) -> bool:
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_real_celery_worker_forks_its_pool_with_tensorflow_loaded(procs, tmp_path):
    """`airflow celery worker` with the config: its pool process (the one that forks each task
    process) has TensorFlow's library mapped before any task arrives; without it, it has not."""
    queue = f"preload-test-{uuid.uuid4().hex[:8]}"  # a queue nobody sends to
    base = {**os.environ, "AIRFLOW__CORE__EXECUTOR": "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/11", "AIRFLOW__CELERY__RESULT_BACKEND": "redis://127.0.0.1:6379/11"}
    seen = {}
    for label, extra in (("warm", {"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "dlagent.celery_config.CELERY_CONFIG"}), ("plain", {})):
        log = tmp_path / f"{label}.log"
        with open(log, "wb") as out:
            worker = procs.start([str(Path(sys.executable).parent / "airflow"), "celery", "worker", "--queues", queue, "--concurrency", "1", "--skip-serve-logs", "--celery-hostname", f"{label}-{queue}@%h"],
                                 env={**base, **extra}, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
        deadline = time.monotonic() + 150
        while True:
            members = [p.pid for p in dev_procs.group_members(worker.pid)]
            pool = [pid for pid in members if "ForkPoolWorker" in _cmdline(pid)]  # Celery names its prefork pool's processes so
            if b"ready." in log.read_bytes() and pool:
                break
            assert worker.poll() is None, f"{label} worker exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{label} worker not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        seen[label] = [_maps_tensorflow(pid) for pid in pool]
        procs.stop(worker)
    assert seen == {"warm": [True], "plain": [False]}, seen


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _task_outlives_its_supervisor(mode: str) -> bool:
    """Fork a "supervisor" that forks a "task", SIGKILL the supervisor: is the task still running?"""
    script = r"""
import os, signal, sys, time
if sys.argv[1] == "warm":
    import dlagent.preload
read, write = os.pipe()
supervisor = os.fork()
if supervisor == 0:
    task = os.fork()
    if task == 0:
        time.sleep(60)
        os._exit(0)
    os.write(write, str(task).encode())
    time.sleep(60)
    os._exit(0)
task = int(os.read(read, 32))
os.kill(supervisor, signal.SIGKILL)
os.waitpid(supervisor, 0)
deadline = time.monotonic() + 5
alive = True
while alive and time.monotonic() < deadline:
    try:
        alive = open(f"/proc/{task}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        alive = False
    time.sleep(0.1)
if alive:
    os.kill(task, signal.SIGKILL)
print("RESULT", alive)
"""
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1] == "RESULT True"


def test_a_task_process_dies_with_its_supervisor_once_preloaded():
    """Airflow's supervisor gives each task process its own process group: without the preload
    a task whose supervisor was killed runs on as an orphan; with it, Linux kills it too."""
    assert _task_outlives_its_supervisor("plain")
    assert not _task_outlives_its_supervisor("warm")


def test_the_local_executor_setting_loads_the_warm_executor():
    out = subprocess.run([sys.executable, "-c", "from airflow.executors.executor_loader import ExecutorLoader; "
                          "cls, _ = ExecutorLoader.import_executor_cls(ExecutorLoader.lookup_executor_name_by_str('dlagent.executors.WarmLocalExecutor')); "
                          "import sys; print(cls.__mro__[1].__name__, 'tensorflow' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "AIRFLOW__CORE__EXECUTOR": "dlagent.executors.WarmLocalExecutor"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "LocalExecutor False"  # loading the class imports no TensorFlow; its start() does
