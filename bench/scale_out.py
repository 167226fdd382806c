"""Scale-out: tuning trials per minute on CeleryExecutor with one Celery worker, then two.

Each round starts the real services (`dlagent_dev.stack.LocalStack`: api-server, scheduler,
dag-processor, triggerer, MLflow server) with CeleryExecutor, the Redis broker on this
machine and 1 or 2 Celery workers (concurrency 1 each), on fresh PostgreSQL databases
(Airflow metadata, MLflow store, Optuna study). Each Celery worker is pinned to its own CPU
(its pool and task processes inherit the affinity), so one worker stands for one machine and
the figure measures dlagent's coordination (shared study, locks, scheduling), not
TensorFlow's threads of two workers competing for the same two cores. The other services
are not pinned.

Every repetition triggers dl_agent_pipeline through the REST API (`agent_policy: off`, so the
Params run as given) with 2 mapped tuning workers sharing one study. Before the trigger the
benchmark creates that study and enqueues the same fixed list of trial configurations
(learning rate x batch size drawn once from seed 0; no pruning, no early stopping), so both
rounds and every repetition train exactly the same trials. It measures the tune tasks' span,
first start to last end, from Airflow's task instances: with one Celery worker the two mapped
tune tasks run one after the other (the first one finishes the study); with two they run at
once, on both workers. Prints which Celery worker ran which mapped task and trials, and where the
CPU went while the trials ran (`dlagent_dev.cpu_use`): the pinned workers' cores against
everything else's (the services, PostgreSQL, Redis, this script, which on 2 cores can only take
their CPU from the workers), so the speed-up splits into what the coordination costs (trials per
worker CPU-minute, two workers against one) and what this machine leaves the workers (their
cores, two against one).
``--cpu-quota CORES`` also caps each worker, with everything it starts, at that share of its CPU
(a cpu cgroup, `dlagent_dev.cpu_quota`): each worker is then a machine of ``CORES`` cores and the
rest of both CPUs is the services' (on 2 cores without it, the services' 0.3 core comes out of
the workers' in the two-worker round only). 0.7 leaves 0.3 of each CPU, 0.6 in all, twice what
the services used while the trials ran (0.26-0.36 core, measured 2026-12-05). The figure without
a quota stays the run the issue describes; with one, it is the coordination alone on machines
whose size is the same in both rounds.
At the end it fails (exit 1) if any process it started is still running, and lists it
(`dlagent_dev.procs`, the same check as the test suite's).

    python bench/scale_out.py                        # 16 trials of the digits CNN, 3 repetitions, pinned
    python bench/scale_out.py --trials 24 --epochs 10 --reps 5
    python bench/scale_out.py --no-pin               # both workers share every CPU (measured 1.47x-1.58x)
    python bench/scale_out.py --cpu-quota 0.7        # each pinned worker a 0.7-core machine, the rest the services'

Goal: two workers at least 1.8x the trials per minute of one (the limit is 2.0x), judged on the
speed-up of the medians (the two-worker round's median trials per minute over the one-worker
round's; ``speedup`` in the RESULT, the figure of every run so far); each repetition's own
speed-up (repetition i of each round) and their mean with its 95 % interval are printed beside
it. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from statistics import median

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "plugins"))
sys.path.insert(0, str(PROJECT_DIR / "dev"))


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


SPACE = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
         "batch_size": {"type": "categorical", "choices": [32, 64, 128]}}


def fixed_trials(count: int, seed: int = 0) -> list[dict]:
    """The trial configurations every round and repetition runs, in this order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low, high = np.log(SPACE["learning_rate"]["low"]), np.log(SPACE["learning_rate"]["high"])
    return [{"learning_rate": float(np.exp(rng.uniform(low, high))), "batch_size": int(rng.choice(SPACE["batch_size"]["choices"]))}
            for _ in range(count)]


def enqueue_study(storage: str, study_name: str, trials: list[dict]) -> None:
    """Create the run's study before the DAG's create_study task (which continues it and records
    its settings) with ``trials`` waiting: the tuning workers ask for these before sampling."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize")
    for params in trials:
        study.enqueue_trial(params)


def one_round(workers: int, conf: dict, trials: list[dict], *, reps: int, broker_db: int, cpus, quota=None) -> list[dict]:
    """One stack with ``workers`` Celery workers on fresh databases; ``reps`` pipeline runs, each its own study."""
    from dlagent_dev.pgdb import bench_admin_url, throwaway_databases

    with throwaway_databases(bench_admin_url()) as make_database:
        return _one_round(workers, conf, trials, reps=reps, broker_db=broker_db, cpus=cpus, quota=quota,
                          databases=(make_database(), make_database(), make_database()))


def _one_round(workers: int, conf: dict, trials: list[dict], *, reps: int, broker_db: int, cpus, databases, quota=None) -> list[dict]:
    import optuna
    from dlagent_dev.airflow_api import AirflowApi
    from dlagent_dev.cpu_use import CpuUse
    from dlagent_dev.stack import ADMIN_USER, LocalStack, free_port, postgres_stack_env

    airflow_db, mlflow_db, optuna_db = databases
    home = Path(tempfile.mkdtemp(prefix=f"dlagent-scale-{workers}-"))
    env = postgres_stack_env(home, airflow_db=airflow_db, mlflow_db=mlflow_db, optuna_db=optuna_db,
                             AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:6379/{broker_db}")
    stack = LocalStack(env, airflow_port=free_port(), mlflow_port=free_port(), executor="CeleryExecutor", celery_workers=workers,
                       celery_cpus=cpus[:workers] if cpus else None, celery_cpu_quota=quota)
    results = []
    with CpuUse() as cpu_use, stack:
        api = AirflowApi(stack.airflow_url, ADMIN_USER, stack.admin_password)
        api.wait_for_dag("dl_agent_pipeline")
        api.unpause("dl_agent_pipeline")
        for rep in range(1, reps + 1):
            run_id = f"scale_out_{workers}_{rep}"
            study_name = f"dl_agent_pipeline.{run_id}"
            enqueue_study(optuna_db, study_name, trials)
            api.trigger("dl_agent_pipeline", conf, run_id=run_id)
            state = api.wait_for_run("dl_agent_pipeline", run_id, timeout=3600, poll=5)
            tune = [t for t in api.task_instances("dl_agent_pipeline", run_id) if t["task_id"] == "tune"]
            if state != "success" or any(t["state"] != "success" for t in tune):
                raise SystemExit(f"run {state}: {[(t['map_index'], t['state']) for t in tune]}\n{stack.tail_logs(30)}")
            start = min(_time(t["start_date"]) for t in tune)
            end = max(_time(t["end_date"]) for t in tune)
            study = optuna.load_study(study_name=study_name, storage=optuna_db)
            done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
            ran = [t.params for t in sorted(done, key=lambda t: t.number)]
            if ran != trials:
                raise SystemExit(f"repetition {rep} with {workers} workers ran other trials than the fixed list:\n{ran}\n{trials}")
            by_process: dict[str, list[int]] = {}
            for trial in done:
                by_process.setdefault(trial.user_attrs.get("worker", "?"), []).append(trial.number)
            minutes = (end - start).total_seconds() / 60
            cores = cpu_use.between(start.timestamp(), end.timestamp())
            worker_cores = sum(cores["pinned"].get(cpu, 0.0) for cpu in (c for group in (cpus or ())[:workers] for c in group))
            result = {"workers": workers, "rep": rep, "trials": len(done), "tune_span_s": round(minutes * 60, 1),
                      "trials_per_min": round(len(done) / minutes, 2),
                      "worker_cores": round(worker_cores, 3), "other_cores": cores["unpinned"], "cpu_busy": cores["cpu_busy"],
                      "other_by_command": cores["unpinned_by_command"],
                      "trials_per_worker_cpu_min": round(len(done) / (worker_cores * minutes), 3) if worker_cores else None,
                      "celery_worker_of_tune_task": stack.celery_worker_of(run_id, "tune"),
                      "trials_by_process": by_process}
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def _mean_by_command(results: list[dict]) -> list[tuple[str, float]]:
    """The unpinned processes' cores by command, averaged over the repetitions, biggest first."""
    names = {name for r in results for name in r["other_by_command"]}
    means = {name: sum(r["other_by_command"].get(name, 0.0) for r in results) / len(results) for name in names}
    return [(name, round(cores, 3)) for name, cores in sorted(means.items(), key=lambda item: -item[1])]


def _cpu_split(one: list[dict], two: list[dict]) -> dict:
    """Where the CPU went while the trials ran: the pinned workers' cores and everyone else's, and
    the two figures the speed-up is made of (medians of the repetitions)."""
    worker_1, worker_2 = (median([r["worker_cores"] for r in rs]) for rs in (one, two))
    per_cpu_min_1, per_cpu_min_2 = (median([r["trials_per_worker_cpu_min"] for r in rs]) for rs in (one, two))
    return {"worker_cores_1": round(worker_1, 2), "worker_cores_2": round(worker_2, 2),
            "other_cores_1": round(median([r["other_cores"] for r in one]), 2),
            "other_cores_2": round(median([r["other_cores"] for r in two]), 2),
            "coordination_efficiency": round(per_cpu_min_2 / per_cpu_min_1, 3), "worker_core_ratio": round(worker_2 / worker_1, 3)}


def main() -> int:
    from dlagent_dev import leftovers

    session = leftovers.begin_session(PROJECT_DIR)  # every process started from here on carries its mark
    try:
        return _main()
    finally:
        left = leftovers.end_session(session)
        if left:
            print(leftovers.report(left, "processes the benchmark left running (now stopped)"), file=sys.stderr, flush=True)
            sys.exit(1)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--reps", type=int, default=3, help="pipeline runs per worker count (default 3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin each Celery worker to its own CPU")
    parser.add_argument("--cpu-quota", type=float, default=None, metavar="CORES",
                        help="cap each pinned worker, with what it starts, at this share of its CPU (e.g. 0.7); default none")
    args = parser.parse_args()
    if args.cpu_quota is not None:
        from dlagent_dev import cpu_quota

        if not args.pin or not 0 < args.cpu_quota <= 1:
            print(f"--cpu-quota needs pinned workers and a share of one CPU in (0, 1], got {args.cpu_quota}", file=sys.stderr)
            return 2
        if not cpu_quota.supported():
            print("--cpu-quota: this machine has no writable cpu cgroup; run without it", file=sys.stderr)
            return 2
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) < 2:
        print(f"--pin needs 2 CPUs, this process may use {cpus}: run with --no-pin", file=sys.stderr)
        return 2
    pinned = ((cpus[0],), (cpus[1],)) if args.pin else None
    from dlagent_dev.stats import interval

    trials = fixed_trials(args.trials)
    conf = {"n_trials": args.trials, "tuning_workers": 2, "epochs": args.epochs, "model": args.model, "pruner": "none",
            "search_space": SPACE, "early_stopping_patience": 0, "agent_policy": "off",
            "experiment_name": "scale_out", "compression_candidates": [{"quantization": "dynamic"}]}
    print(f"conf: {json.dumps(conf)}\ntrials: {json.dumps(trials)}\nCelery workers pinned to CPUs: {pinned}; "
          f"CPU quota per worker: {args.cpu_quota or 'none'}", flush=True)
    one = one_round(1, conf, trials, reps=args.reps, broker_db=11, cpus=pinned, quota=args.cpu_quota)
    two = one_round(2, conf, trials, reps=args.reps, broker_db=12, cpus=pinned, quota=args.cpu_quota)
    print(f"\n{'Celery workers':>15} {'rep':>4} {'trials':>7} {'tune span s':>12} {'trials/min':>11} {'worker cores':>13} "
          f"{'other cores':>12} {'trials/worker CPU-min':>22}")
    for r in (*one, *two):
        print(f"{r['workers']:>15} {r['rep']:>4} {r['trials']:>7} {r['tune_span_s']:>12} {r['trials_per_min']:>11} "
              f"{r['worker_cores']:>13} {r['other_cores']:>12} {r['trials_per_worker_cpu_min'] or '-':>22}")
    for r in two:
        print(f"two workers, repetition {r['rep']}: tune task -> Celery worker {r['celery_worker_of_tune_task']}")
    both = all(len(set(r["celery_worker_of_tune_task"].values())) == 2 and len(r["trials_by_process"]) == 2 for r in two)
    print(f"both Celery workers ran trials of the one study in every repetition: {both}")
    rate_1 = sorted(r["trials_per_min"] for r in one)
    rate_2 = sorted(r["trials_per_min"] for r in two)
    median_1, median_2 = rate_1[len(rate_1) // 2], rate_2[len(rate_2) // 2]
    speedups = [b["trials_per_min"] / a["trials_per_min"] for a, b in zip(one, two, strict=True)]  # repetition i of each round
    spread = interval(speedups) if len(speedups) > 1 else None
    median_speedup = median_2 / median_1
    print(f"trials/min, median (min..max): 1 worker {median_1} ({rate_1[0]}..{rate_1[-1]}), 2 workers {median_2} ({rate_2[0]}..{rate_2[-1]})")
    print(f"speed-up of the medians {median_speedup:.3f} (goal >= 1.8); per repetition {[round(x, 3) for x in speedups]}"
          + (f", mean {spread['mean']} 95 % interval {spread['ci95']}" if spread else ""))
    cpu = _cpu_split(one, two) if args.pin else {}
    if cpu:
        print(f"CPU while the trials ran (median of the repetitions, in cores): the Celery workers {cpu['worker_cores_1']} with one, "
              f"{cpu['worker_cores_2']} with two; everything else (services, PostgreSQL, Redis, this script) "
              f"{cpu['other_cores_1']} and {cpu['other_cores_2']}")
        for workers, rs in ((1, one), (2, two)):
            print(f"everything else with {workers} worker(s), by command (mean of the repetitions, cores): "
                  + ", ".join(f"{name} {cores}" for name, cores in _mean_by_command(rs)))
        print(f"trials per worker CPU-minute, two workers against one: {cpu['coordination_efficiency']} (1.0: sharing the study and "
              f"the scheduling cost the workers nothing); the workers' cores, two against one: {cpu['worker_core_ratio']}: "
              f"the speed-up this machine leaves them, at one worker's cost per trial")
    print("RESULT " + json.dumps({**cpu, "trials_per_min_1": median_1, "trials_per_min_2": median_2, "speedup": round(median_speedup, 3),
                                  "speedups": [round(x, 3) for x in speedups], "speedup_ci95": spread["ci95"] if spread else None,
                                  "trials_per_min_1_range": [rate_1[0], rate_1[-1]], "trials_per_min_2_range": [rate_2[0], rate_2[-1]],
                                  "reps": args.reps, "pinned": args.pin, "cpu_quota": args.cpu_quota, "trials": args.trials, "epochs": args.epochs,
                                  "goal_met": median_speedup >= 1.8}))
    return 0 if both else 1


if __name__ == "__main__":
    sys.exit(main())
