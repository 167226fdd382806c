"""What Airflow costs: dl_agent_pipeline through `airflow dags test` and on the real services vs plain dlagent.ml calls.

Every arm does the same work on the same data and seed: validate and load the data, train
and log the model to MLflow, compress it (one dynamic-range TFLite candidate), evaluate the
Keras model and the candidate, gate it, register it as champion and write the serving bundle.
Tuning is off here (`n_trials` 0; bench/hpo_vs_grid.py covers it).

1. **direct**: the same `dlagent.ml` calls in one fresh process (the baseline).
2. **`airflow dags test`** (what `make run` uses), split in three figures:
   - Airflow's CLI start-up (the `airflow` command and its in-process execution API, paid once
     per `dags test`, not dlagent's code). The execution API starts when the first task first
     calls it, inside that task's span (3-4 s here): it is measured from the log and moved to
     the start-up figure (before 2026-12-05, fourth session, it was counted in the DAG run);
   - the DAG run itself, first task start to last task end, and its ratio to direct; Airflow's
     idle passes (the `dags test` loop sleeps 1 s when a pass finds nothing to run, here once,
     after the empty mapped `tune`) are counted and stay in it;
   - the overhead per task inside the run: (DAG run - direct) / tasks.
3. **the real services** (`--services`, what `make ui` starts: api-server, scheduler,
   dag-processor, triggerer and an MLflow server, dlagent's warm LocalExecutor, PostgreSQL
   stores): the DAG run triggered through the REST API, from its start to its end. Here every
   task is its own process, forked with TensorFlow, Keras and MLflow already imported (since
   `bd08d63`; before, each imported them itself), that parses the DAG file, and the scheduler
   starts the next task only after it sees the last one end. Printed per task: its duration on
   the services and inside `dags test` (the difference is what a process of its own costs) and
   the wait before it started (the scheduler's latency). Then the floor of a cold task process
   (the plain LocalExecutor's): a fresh process importing the task runner and the DAG file, then
   the MLflow client, then TensorFlow.

    python bench/overhead.py                                  # bundled digits
    python bench/overhead.py --data ../shared/data/mnist-t10k --services

The direct run and `dags test` run ``--repeats`` times (default 3), interleaved, each pair in a
fresh folder (new stores: every run registers and deploys version 1); the figures are their mean
and a 95 % interval (one run's per-task figure moves by about 0.2 s on this 2-core machine). The
services run once, after the last pair.

Goals: at most 0.3 s per task inside `dags test` (Airflow's own floor, measured with empty
tasks, is about 0.12 s) and a DAG-run ratio of at most 1.15 on the MNIST set; the per-task cost
on the services is measured and explained. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "plugins"))
sys.path.insert(0, str(PROJECT_DIR / "dev"))

DIRECT = r"""
import json, sys, tempfile, time
from pathlib import Path
start = time.perf_counter()
from mlflow import MlflowClient
from dlagent.ml import registry, serving, tracking
from dlagent.ml.compression import CompressionConfig, compress
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import load_dataset_with_options
from dlagent.ml.evaluation import evaluate_keras, evaluate_tflite, log_evaluation
from dlagent.ml.gate import GateThresholds
from dlagent.ml.model_store import load_keras_model, log_keras_model, read_tflite
from dlagent.ml.training import train
conf, uri, artifacts, deploy_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
config = TrainConfig.from_dict({k: v for k, v in conf.items() if k in TrainConfig.__dataclass_fields__})
options = {"max_samples": conf.get("max_samples")}
client = MlflowClient(uri, registry_uri=uri)
experiment = tracking.ensure_experiment(client, "overhead-direct", artifacts)
parent, _ = tracking.find_or_create_run(client, experiment, "direct", run_name="direct")
load_dataset_with_options(conf["dataset"], options, seed=config.seed)  # validate
def child(name):
    return tracking.find_or_create_run(client, experiment, f"direct/{name}", run_name=name, parent_run_id=parent)[0]
splits = load_dataset_with_options(conf["dataset"], options, seed=config.seed)
run_id = child("train")
result, model_uri = train(splits, config, client=client, run_id=run_id)
client.set_terminated(run_id)
compress_id = child("compress")
candidate = compress(load_keras_model(client, model_uri), splits,
                     CompressionConfig.from_dict({"seed": config.seed, **conf["compression_candidates"][0]}), latency_runs=100)
tracking.log_metrics(client, compress_id, candidate.metrics)
candidate_uri = log_keras_model(client, compress_id, candidate.keras_model, splits.x_test[:2], labels=splits.class_names,
                                tflite_bytes=candidate.tflite_bytes)
client.set_terminated(compress_id)
eval_id = child("evaluate")
with tempfile.TemporaryDirectory() as tmp:
    reference = evaluate_keras(load_keras_model(client, model_uri), splits, out_dir=Path(tmp) / "k", latency_runs=100)
    log_evaluation(client, eval_id, reference, prefix="keras_")
    report = evaluate_tflite(read_tflite(client, candidate_uri), splits, out_dir=Path(tmp) / "t", explain=False, latency_runs=100)
    log_evaluation(client, eval_id, report, prefix="tflite_")
client.set_terminated(eval_id)
deploy_id = child("deploy")
outcome = registry.deploy_if_blessed(client, "overhead", candidate_uri, candidate_metrics={**candidate.metrics, **report.metrics},
                                     reference_metrics=reference.metrics, thresholds=GateThresholds(), idempotency_key="direct",
                                     run_id=compress_id)
serving.deploy_champion_bundle(client, "overhead", deploy_dir)
client.set_terminated(deploy_id)
client.set_terminated(parent)
print("DIRECT " + json.dumps({"seconds": time.perf_counter() - start, "test_accuracy": report.metrics["test_accuracy"],
                              "blessed": outcome["decision"]["blessed"]}))
"""



def run_direct(conf: dict, workdir: Path) -> tuple[float, dict]:
    uri = f"sqlite:///{workdir / 'direct.db'}"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", DIRECT, json.dumps(conf), uri, str(workdir / "direct-artifacts"), str(workdir / "direct-deploy")],
                         capture_output=True, text=True, check=True, cwd=PROJECT_DIR, env=_env(workdir))
    wall = time.perf_counter() - started
    line = next(text for text in out.stdout.splitlines() if text.startswith("DIRECT "))
    return wall, json.loads(line[len("DIRECT "):])


def _env(workdir: Path) -> dict:
    from dlagent_dev.env import stack_env

    env = stack_env({**os.environ, "DLAGENT_HOME": str(workdir / "home")})
    env["AIRFLOW_HOME"] = str(workdir / "airflow")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{workdir / 'airflow' / 'airflow.db'}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'airflow-mlflow.db'}"
    env["DLAGENT_ARTIFACT_ROOT"] = str(workdir / "airflow-artifacts")
    env["DLAGENT_DEPLOY_DIR"] = str(workdir / "airflow-deploy")
    if os.environ.get("DLAGENT_BENCH_DATA_ROOT"):  # tasks read data only inside the data roots: name the folder used
        env["DLAGENT_DATA_ROOTS"] = os.environ["DLAGENT_BENCH_DATA_ROOT"]
    return env


def run_airflow(conf: dict, workdir: Path) -> tuple[float, dict]:
    from dlagent_dev.env import setup
    from dlagent_dev.progress import dags_test_timing

    env = _env(workdir)
    setup(env)  # migrate once, outside the timed part (a deployment has its DB already)
    airflow = str(Path(sys.executable).with_name("airflow"))
    started = time.perf_counter()
    out = subprocess.run([airflow, "dags", "test", "dl_agent_pipeline", "-c", json.dumps({**conf, "experiment_name": "overhead"})],
                         capture_output=True, text=True, cwd=PROJECT_DIR, env=env)
    wall = time.perf_counter() - started
    if out.returncode != 0 or "state=success" not in out.stdout:
        sys.exit(f"airflow dags test failed:\n{out.stdout[-4000:]}\n{out.stderr[-2000:]}")
    return wall, dags_test_timing(out.stdout)


def run_services(conf: dict, workdir: Path) -> dict:
    """The pipeline on the real services with LocalExecutor; the DAG run's span and each task's times."""
    from dlagent_dev.airflow_api import AirflowApi
    from dlagent_dev.pgdb import bench_admin_url, throwaway_databases
    from dlagent_dev.stack import ADMIN_USER, LocalStack, free_port, postgres_stack_env

    extra = {"DLAGENT_DATA_ROOTS": os.environ["DLAGENT_BENCH_DATA_ROOT"]} if os.environ.get("DLAGENT_BENCH_DATA_ROOT") else {}
    with throwaway_databases(bench_admin_url()) as make_database:
        env = postgres_stack_env(workdir / "services", airflow_db=make_database(), mlflow_db=make_database(),
                                 optuna_db=make_database(), **extra)
        with LocalStack(env, airflow_port=free_port(), mlflow_port=free_port()) as stack:
            api = AirflowApi(stack.airflow_url, ADMIN_USER, stack.admin_password)
            api.wait_for_dag("dl_agent_pipeline")
            api.unpause("dl_agent_pipeline")
            run_id = api.trigger("dl_agent_pipeline", {**conf, "experiment_name": "overhead-services"}, run_id="overhead_services")
            state = api.wait_for_run("dl_agent_pipeline", run_id, timeout=1800, poll=1)
            run = api.get(f"/api/v2/dags/dl_agent_pipeline/dagRuns/{run_id}")
            instances = api.task_instances("dl_agent_pipeline", run_id)
            if state != "success":
                sys.exit(f"the services' run ended {state}: {[(t['task_id'], t['state']) for t in instances]}\n{stack.tail_logs(30)}")
    ran = [t for t in instances if t.get("start_date") and t.get("end_date")]
    tasks = {}
    for t in sorted(ran, key=lambda t: t["start_date"]):
        name = t["task_id"] if t.get("map_index", -1) in (-1, None) else f"{t['task_id']}[{t['map_index']}]"
        start, end = _stamp(t["start_date"]), _stamp(t["end_date"])
        tasks[name] = {"start": start, "end": end, "queued": _stamp(t["queued_when"]) if t.get("queued_when") else None}
    first, last = min(v["start"] for v in tasks.values()), max(v["end"] for v in tasks.values())
    return {"run_s": _stamp(run["end_date"]) - _stamp(run["start_date"]), "tasks_s": last - first, "tasks": tasks}


# What a task process pays before dlagent's code runs, cumulatively: Airflow's task runner and
# the DAG file (every task), the MLflow client (every task that reads or logs a run) and
# TensorFlow (every task that touches a model). None of these can be shared between tasks
# when each task is its own process, so they are the floor of the per-task cost on the services.
FLOOR_IMPORTS = {
    "task runner + DAG file": "import airflow.sdk.execution_time.task_runner, dl_agent_pipeline",
    "+ MLflow client": "import airflow.sdk.execution_time.task_runner, dl_agent_pipeline, mlflow",
    "+ TensorFlow": "import airflow.sdk.execution_time.task_runner, dl_agent_pipeline, mlflow, tensorflow",
}


def process_floor(workdir: Path, repeats: int = 3) -> dict[str, float]:
    """Median wall time of a fresh Python process doing each of ``FLOOR_IMPORTS``."""
    env = {**_env(workdir), "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR / "plugins"), str(PROJECT_DIR / "dags")])}
    floor = {}
    for name, statement in FLOOR_IMPORTS.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True, cwd=PROJECT_DIR, env=env, capture_output=True)
            times.append(time.perf_counter() - started)
        floor[name] = sorted(times)[len(times) // 2]
    return floor


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="an MNIST IDX folder (e.g. ../shared/data/mnist-t10k); default: bundled digits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--services", action="store_true", help="also run the pipeline on the real services (LocalExecutor, PostgreSQL)")
    parser.add_argument("--repeats", type=int, default=3, help="direct and `dags test` runs, interleaved, each in a fresh folder "
                                                              "(at least 3: the figures get a 95 %% interval)")
    args = parser.parse_args()
    if args.repeats < 3:
        sys.exit("--repeats must be at least 3 (one run's per-task figure moves by +-0.2 s on this machine)")
    dataset = "digits"
    if args.data:
        if not Path(args.data).is_dir():
            sys.exit(f"--data {args.data!r} is not a folder: give the MNIST IDX folder, e.g. ../shared/data/mnist-t10k")
        dataset = f"mnist-idx:{Path(args.data).resolve()}"
        os.environ["DLAGENT_BENCH_DATA_ROOT"] = str(Path(args.data).resolve())
    # Tuning off (it has its own benchmark); one compression candidate, evaluated, gated, deployed.
    conf = {"dataset": dataset, "model": "cnn", "epochs": args.epochs, "seed": 42, "early_stopping_patience": 0,
            "n_trials": 0, "compression_candidates": [{"quantization": "dynamic"}]}
    from dlagent_dev.stats import interval

    repeats = []
    services = floor = None
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="dlagent-overhead-") as tmp:  # fresh stores: every run deploys version 1
            workdir = Path(tmp)
            direct_s, direct = run_direct(conf, workdir)
            airflow_s, log = run_airflow(conf, workdir)
            if args.services and repeat == args.repeats - 1:
                services, floor = run_services(conf, workdir), process_floor(workdir)
        tasks = log["tasks"]
        first = min(tasks, key=lambda t: tasks[t]["start"])
        spans = {t: v["end"] - v["start"] - (log["execution_api_s"] if t == first else 0.0)
                 for t, v in tasks.items() if {"start", "end"} <= set(v)}
        # The DAG run: first task start to last task end, less the execution API's start inside
        # the first task (Airflow's, once per command: it goes to the start-up figure).
        in_dag_s = max(v["end"] for v in tasks.values()) - tasks[first]["start"] - log["execution_api_s"]
        # Inside the DAG run the work is the direct run's work spread over tasks; what is left is
        # Airflow's scheduling, state and XCom traffic plus each task re-loading what it needs.
        repeats.append({"direct_s": direct_s, "airflow_s": airflow_s, "in_dag_s": in_dag_s, "startup_s": airflow_s - in_dag_s,
                        "execution_api_s": log["execution_api_s"], "idle_passes": log["idle_passes"],
                        "overhead_per_task_s": (in_dag_s - direct_s) / len(spans), "in_dag_ratio": in_dag_s / direct_s,
                        "ratio": airflow_s / direct_s})
        print(f"[bench] run {repeat + 1}/{args.repeats}: direct {direct_s:.2f} s, DAG run {in_dag_s:.2f} s, "
              f"{repeats[-1]['overhead_per_task_s']:.3f} s per task", flush=True)
    figures = {key: interval([r[key] for r in repeats]) for key in repeats[0]}
    direct_s, airflow_s, in_dag_s, startup_s = (figures[k]["mean"] for k in ("direct_s", "airflow_s", "in_dag_s", "startup_s"))
    overhead_per_task, ratio = figures["overhead_per_task_s"]["mean"], figures["ratio"]["mean"]
    print(f"data: {dataset}, cnn, {args.epochs} epochs, seed 42 (direct test_accuracy {direct['test_accuracy']:.4f})")
    print(f"direct dlagent.ml calls (one process):  {direct_s:7.2f} s")
    print(f"airflow dags test (whole command):       {airflow_s:7.2f} s   ratio {ratio:.2f}")
    print(f"  of which CLI + execution API start-up: {startup_s:7.2f} s   (the execution API's start, inside the first "
          f"task's span: {figures['execution_api_s']['mean']:.2f} s)")
    print(f"  of which the DAG run's tasks:          {in_dag_s:7.2f} s   ratio {figures['in_dag_ratio']['mean']:.2f} "
          f"(95 % CI {figures['in_dag_ratio']['ci95'][0]:.2f}..{figures['in_dag_ratio']['ci95'][1]:.2f})")
    print(f"    of which Airflow's idle passes (1 s sleeps of `dags test` with nothing to run): "
          f"{figures['idle_passes']['mean']:.0f} a run, kept in the DAG run")
    print(f"    each task, in the last run ({len(spans)} tasks; {first}'s without the execution API's start):")
    for task, seconds in spans.items():
        print(f"    {task:<18} {seconds:6.2f} s")
    low, high = figures["overhead_per_task_s"]["ci95"]
    print(f"overhead per task, mean of {args.repeats} runs:  {overhead_per_task:7.3f} s   (95 % CI {low:.3f}..{high:.3f}; goal <= 0.3)")
    result = {
        "airflow_s": round(airflow_s, 2), "direct_s": round(direct_s, 2), "ratio": round(ratio, 3),
        "overhead_per_task_s": round(overhead_per_task, 3), "overhead_per_task_ci95": figures["overhead_per_task_s"]["ci95"],
        "startup_s": round(startup_s, 2), "execution_api_s": round(figures["execution_api_s"]["mean"], 2),
        "idle_passes": figures["idle_passes"]["mean"], "in_dag_s": round(in_dag_s, 2), "in_dag_ratio": figures["in_dag_ratio"]["mean"],
        "in_dag_ratio_ci95": figures["in_dag_ratio"]["ci95"], "tasks": len(spans), "dataset": dataset, "repeats": args.repeats,
        "per_run": [{k: round(v, 3) for k, v in r.items()} for r in repeats],
    }
    if services:
        per_task = (services["run_s"] - direct_s) / len(services["tasks"])
        print(f"real services, LocalExecutor (DAG run start to end): {services['run_s']:7.2f} s   ratio {services['run_s'] / direct_s:.2f}")
        print(f"  overhead per task (tasks {len(services['tasks'])}):           {per_task:7.2f} s")
        print(f"    {'task':<24}{'services s':>11}{'dags test s':>12}{'waited s':>10}")
        previous_end = None
        for task, times in services["tasks"].items():
            inside = spans.get(task)
            waited = times["start"] - previous_end if previous_end is not None else float("nan")
            print(f"    {task:<24}{times['end'] - times['start']:>11.2f}{inside if inside is not None else float('nan'):>12.2f}{waited:>10.2f}")
            previous_end = max(previous_end or 0.0, times["end"])
        print("  a task process's floor (fresh process, median of 3), before any dlagent code runs:")
        for name, seconds in floor.items():
            print(f"    {name:<24}{seconds:>11.2f} s")
        durations = [v["end"] - v["start"] for v in services["tasks"].values()]
        gaps = services["run_s"] - services["tasks_s"]
        result.update({"services_run_s": round(services["run_s"], 2), "services_ratio": round(services["run_s"] / direct_s, 3),
                       "services_overhead_per_task_s": round(per_task, 3), "services_tasks": len(services["tasks"]),
                       "services_task_seconds": round(sum(durations), 2), "services_outside_tasks_s": round(gaps, 2),
                       "process_floor_s": {name: round(seconds, 2) for name, seconds in floor.items()}})
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
