"""Scale-out: tuning trials per minute on CeleryExecutor with one Celery worker, then two.

Each round starts the real services (`dlagent_dev.stack.LocalStack`: api-server, scheduler,
dag-processor, triggerer, MLflow server) with CeleryExecutor, the Redis broker on this
machine and 1 or 2 Celery workers (concurrency 1 each), on fresh PostgreSQL databases
(Airflow metadata, MLflow store, Optuna study). It triggers dl_agent_pipeline through the
REST API with 2 mapped tuning workers sharing one study, and measures the tune tasks' span:
first start to last end, from Airflow's task instances. With one Celery worker the two
mapped tune tasks run one after the other (the first one finishes the study); with two they
run at once, on both workers. Prints which Celery worker ran which mapped task and trials.
At the end it fails (exit 1) if any process it started is still running, and lists it
(`dlagent_dev.procs`, the same check as the test suite's).

    python bench/scale_out.py                       # 16 trials of the digits CNN
    python bench/scale_out.py --trials 24 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "plugins"))
sys.path.insert(0, str(PROJECT_DIR / "dev"))
ADMIN_URL = os.environ.get("DLAGENT_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def create_databases(count: int) -> list[str]:
    import psycopg2

    admin = psycopg2.connect(ADMIN_URL.replace("+psycopg2", ""))
    admin.autocommit = True
    names = [f"dlagent_bench_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    base = ADMIN_URL.rsplit("/", 1)[0]
    return [f"{base}/{name}" for name in names]


def drop_databases(urls: list[str]) -> None:
    import psycopg2

    admin = psycopg2.connect(ADMIN_URL.replace("+psycopg2", ""))
    admin.autocommit = True
    with admin.cursor() as cur:
        for url in urls:
            cur.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    admin.close()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def worker_of_each_task(log_dir: Path, run_id: str) -> dict[int, str]:
    """map_index of each tune task instance -> the Celery worker whose log shows it running it."""
    ran = {}
    for log in sorted(log_dir.glob("celery-worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "task_id='tune'" in line and run_id in line:
                found = re.search(r"map_index=(\d+)", line)
                if found:
                    ran[int(found.group(1))] = log.stem
    return ran


def one_round(workers: int, conf: dict, broker_db: int) -> dict:
    import optuna
    from dlagent_dev.stack import ADMIN_USER, AirflowApi, LocalStack, free_port, postgres_stack_env

    airflow_db, mlflow_db, optuna_db = databases = create_databases(3)
    home = Path(tempfile.mkdtemp(prefix=f"dlagent-scale-{workers}-"))
    env = postgres_stack_env(home, airflow_db=airflow_db, mlflow_db=mlflow_db, optuna_db=optuna_db,
                             AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:6379/{broker_db}")
    stack = LocalStack(env, airflow_port=free_port(), mlflow_port=free_port(), executor="CeleryExecutor", celery_workers=workers)
    try:
        with stack:
            api = AirflowApi(stack.airflow_url, ADMIN_USER, stack.admin_password)
            api.wait_for_dag("dl_agent_pipeline")
            api.unpause("dl_agent_pipeline")
            run_id = api.trigger("dl_agent_pipeline", conf, run_id=f"scale_out_{workers}")
            state = api.wait_for_run("dl_agent_pipeline", run_id, timeout=3600, poll=5)
            tune = [t for t in api.task_instances("dl_agent_pipeline", run_id) if t["task_id"] == "tune"]
            if state != "success" or any(t["state"] != "success" for t in tune):
                raise SystemExit(f"run {state}: {[(t['map_index'], t['state']) for t in tune]}\n{stack.tail_logs(30)}")
            start = min(_time(t["start_date"]) for t in tune)
            end = max(_time(t["end_date"]) for t in tune)
            storage = optuna_db
            study = optuna.load_study(study_name=f"dl_agent_pipeline.{run_id}", storage=storage)
            trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
            by_process: dict[str, list[int]] = {}
            for trial in trials:
                by_process.setdefault(trial.user_attrs.get("worker", "?"), []).append(trial.number)
            celery = worker_of_each_task(stack.log_dir, run_id)
    finally:
        drop_databases(databases)
    minutes = (end - start).total_seconds() / 60
    result = {"workers": workers, "trials": len(trials), "tune_span_s": round(minutes * 60, 1),
              "trials_per_min": round(len(trials) / minutes, 2), "celery_worker_of_tune_task": celery,
              "trials_by_process": by_process}
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    from dlagent_dev import procs

    session = procs.begin_session(PROJECT_DIR)  # every process started from here on carries its mark
    try:
        return _main()
    finally:
        left = procs.end_session(session)
        if left:
            print(procs.report(left, "processes the benchmark left running (now stopped)"), file=sys.stderr, flush=True)
            sys.exit(1)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()
    conf = {"n_trials": args.trials, "tuning_workers": 2, "epochs": args.epochs, "model": args.model, "pruner": "none",
            "sampler": "random", "experiment_name": "scale_out", "compression_candidates": [{"quantization": "dynamic"}]}
    print(f"conf: {json.dumps(conf)}", flush=True)
    one = one_round(1, conf, broker_db=11)
    two = one_round(2, conf, broker_db=12)
    print(f"\n{'Celery workers':>15} {'trials':>7} {'tune span s':>12} {'trials/min':>11}")
    for r in (one, two):
        print(f"{r['workers']:>15} {r['trials']:>7} {r['tune_span_s']:>12} {r['trials_per_min']:>11}")
    print("two workers: tune task -> Celery worker", two["celery_worker_of_tune_task"])
    both = len(set(two["celery_worker_of_tune_task"].values())) == 2 and len(two["trials_by_process"]) == 2
    print(f"both Celery workers ran trials of the one study: {both}")
    speedup = two["trials_per_min"] / one["trials_per_min"]
    print("RESULT " + json.dumps({"trials_per_min_1": one["trials_per_min"], "trials_per_min_2": two["trials_per_min"],
                                  "speedup": round(speedup, 3)}))
    return 0 if both else 1


if __name__ == "__main__":
    sys.exit(main())
