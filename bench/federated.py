"""Federated training against training on the pooled data: the same model, data, seeds and total epochs.

The MNIST test set in ../shared/data is split by seed into train/validation/test as every
dlagent run splits it; the training split is cut into 4 shards, IID (every shard the data set's
class mix) or label-skewed (Dirichlet 0.5: each shard mostly a few classes). Each arm trains
the product's default CNN:

- **central**: the whole training split, ``rounds x local_epochs`` epochs (early stopping off);
- **fedavg_iid**, **fedavg_skew**: FedAvg over the shards, ``rounds`` rounds of ``local_epochs``;
- **fedprox_skew**: FedProx (``mu`` below) on the skewed shards.

Every site trains every round, so each arm sees each training row ``rounds x local_epochs``
times: the same total epochs as central. The federated arms run the functions the
``dl_agent_federated`` tasks run (``local_update`` per site, ``weighted_average``, scored on the
validation split each round), in one process: this measures what federation does to accuracy,
not Airflow's overhead (bench/overhead.py does that). Test accuracy is the held-out split's.

Defaults (rounds 10, local epochs 2, mu 0.01, alpha 0.5) were set before any run of this
script; none was chosen on its seeds. Each seed gives one difference per arm (arm - central);
the figures are the mean over seeds and its 95 % Student-t interval.

    .venv/bin/python bench/federated.py                       # ../shared/data/mnist-t10k, seeds 0 1 2
    .venv/bin/python bench/federated.py --seeds 0 1 2 3 4 --rounds 10 --local-epochs 2
    .venv/bin/python bench/federated.py --quick               # bundled digits, 1 seed, minutes
    .venv/bin/python bench/federated.py --parts workers       # only the wall time with 1 and 2 Celery workers
    .venv/bin/python bench/federated.py --parts workers --services shared

``--parts workers`` runs ``dl_agent_federated`` itself on the real services (CeleryExecutor,
the local Redis, PostgreSQL stores, each Celery worker pinned to its own CPU as in
bench/scale_out.py: one worker stands for one machine), with 1 and then 2 Celery workers:
the same conf (the MNIST set, or the digits with ``--quick``, 4 IID shards, 3 rounds of 2
local epochs, the agent off), ``--reps`` runs
each; the figure is the rounds' wall time (the setup ending, when round 1 may start, to the
last aggregation ending; before round planning moved into the setup and aggregation tasks it
was measured from round 1's plan task starting), the speed-up of the medians and, per
repetition, its 95 % interval. Each run's whole DAG run time is printed beside it. Every
site has its own Celery queue (``site_queues``): worker ``i`` consumes the default queue and
its sites' queues, and each run is checked, from the workers' logs and the task instances'
queues, to have run every site task on its own site's worker (a real multi-queue deployment).

Where Airflow's and MLflow's services run (``--services``): in a deployment they have a machine
of their own, which two cores cannot give both arms. ``own-core`` (the default, and the layout
of the earlier figures): unpinned, so with one worker they use the other core, free, and with
two they take their CPU from the two workers; a lower bound of the real speed-up. ``shared``:
with one worker they are pinned to its CPU, so both arms pay for them, where a deployment's
workers would not; it overstates the speed-up. Each run
prints the CPU seconds the services and the workers used, in all and per service.

The workers are warm, as every Celery deployment of dlagent is configured
(``dlagent.celery_config``: TensorFlow imported before the task processes fork; a slot free 1 s
after its task, not 5): since ``bd08d63``. The figures before were measured on cold workers.

Goals: within 1 point of central accuracy on IID shards, within 3 points on skewed ones; with
two Celery workers at least 1.6x the speed of one. The last line is ``RESULT {json}``
(accuracies as fractions, gaps in points).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_DIR / "plugins"), str(PROJECT_DIR / "dev")]

SHARDS = 4
ALPHA = 0.5
MU = 0.01
ARMS = ("central", "fedavg_iid", "fedavg_skew", "fedprox_skew")


def run_arm(arm: str, splits, *, seed: int, rounds: int, local_epochs: int) -> dict:
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.federated.rounds import global_scores, run_federated
    from dlagent.ml.federated.settings import FederatedConfig
    from dlagent.ml.federated.shards import partition
    from dlagent.ml.models import build_model
    from dlagent.ml.training import fit

    config = TrainConfig(model="cnn", epochs=rounds * local_epochs, early_stopping_patience=0, seed=seed)
    started = time.perf_counter()
    if arm == "central":
        model = fit(splits, config).model
        result = {"rounds": 0, "bytes_per_round": 0}
    else:
        mode = "iid" if arm.endswith("iid") else "label_skew"
        strategy = "fedprox" if arm.startswith("fedprox") else "fedavg"
        federated = FederatedConfig(n_shards=SHARDS, partition=mode, skew_alpha=ALPHA, rounds=rounds, local_epochs=local_epochs,
                                    strategy=strategy, mu=MU if strategy == "fedprox" else 0.0, seed=seed)
        shards = partition(splits.y_train, SHARDS, mode, seed=seed, alpha=ALPHA)
        model = build_model(config, splits.input_shape, splits.num_classes)
        outcome = run_federated(model, [(splits.x_train[rows], splits.y_train[rows]) for rows in shards], splits.x_val, splits.y_val,
                                config=config, federated=federated)
        # each round every site receives the global weights and sends its own back
        result = {"rounds": outcome.rounds_run, "bytes_per_round": 2 * SHARDS * outcome.history[-1]["bytes_per_site"],
                  "val_by_round": [round(r["val"]["val_accuracy"], 4) for r in outcome.history]}
    test = global_scores(model, splits.x_test, splits.y_test, splits.task, splits.primary)
    return {**result, "arm": arm, "seed": seed, "test_accuracy": test["test_accuracy"], "seconds": round(time.perf_counter() - started, 1)}


def rounds_span(workers: int, conf: dict, *, reps: int, broker_db: int, cpus, data_roots: list[str],
                services: str = "own-core") -> list[float]:
    """Seconds from the setup ending (round 1 may start; the setup plans it) to the last aggregation
    ending, per run, on a stack with ``workers`` Celery workers.

    Every site has its queue (``conf["site_queues"]``); worker ``i`` consumes the default queue
    and the queues of the sites ``i, i + workers, ...``, so each site's tasks must run on its
    own worker: checked per run from the workers' logs, and the run refused if one did not."""
    from datetime import datetime

    from dlagent_dev.airflow_api import AirflowApi
    from dlagent_dev.pgdb import bench_admin_url, throwaway_databases
    from dlagent_dev.stack import ADMIN_USER, LocalStack, free_port, postgres_stack_env

    def stamp(value: str) -> float:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    spans = []
    with throwaway_databases(bench_admin_url()) as make_database:
        home = Path(tempfile.mkdtemp(prefix=f"dlagent-federated-{workers}-"))
        env = postgres_stack_env(home, airflow_db=make_database(), mlflow_db=make_database(), optuna_db=make_database(),
                                 AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:6379/{broker_db}",
                                 DLAGENT_DATA_ROOTS=os.pathsep.join(data_roots))
        site_queues = conf["site_queues"]
        worker_queues = tuple(",".join(["default", *sorted(set(site_queues[w::workers]))]) for w in range(workers))
        # --services shared: with one worker the services run on its CPU (see the module's docstring)
        stack = LocalStack(env, airflow_port=free_port(), mlflow_port=free_port(), executor="CeleryExecutor", celery_workers=workers,
                           celery_cpus=cpus[:workers] if cpus else None, celery_queues=worker_queues,
                           service_cpus=cpus[0] if cpus and workers == 1 and services == "shared" else None)
        with stack:
            api = AirflowApi(stack.airflow_url, ADMIN_USER, stack.admin_password)
            api.wait_for_dag("dl_agent_federated")
            api.unpause("dl_agent_federated")
            for rep in range(1, reps + 1):
                run_id = f"federated_{workers}_{rep}"
                cpu_before = cpu_seconds(stack)
                api.trigger("dl_agent_federated", conf, run_id=run_id)
                state = api.wait_for_run("dl_agent_federated", run_id, timeout=3600, poll=5)
                cpu = {name: used - cpu_before.get(name, 0.0) for name, used in cpu_seconds(stack).items()}
                tasks = api.task_instances("dl_agent_federated", run_id)
                if state != "success":
                    raise SystemExit(f"run {state}: {sorted((t['task_id'], t['state']) for t in tasks)}\n{stack.tail_logs(30)}")
                ran = [t for t in tasks if t["task_id"].startswith("round_") and t["state"] == "success"]
                setup_end = next(stamp(t["end_date"]) for t in tasks if t["task_id"] == "setup")
                span = max(stamp(t["end_date"]) for t in ran) - setup_end
                spans.append(span)
                whole = max(stamp(t["end_date"]) for t in tasks if t["end_date"]) - min(stamp(t["start_date"]) for t in tasks if t["start_date"])
                routing = site_routing(stack, run_id, tasks, site_queues, worker_queues)
                print(json.dumps({"workers": workers, "rep": rep, "rounds_span_s": round(span, 1), "dag_run_s": round(whole, 1),
                                  "serial_per_round": serial_stretches(tasks, stamp),
                                  "cpu_s_workers": round(sum(v for k, v in cpu.items() if k.startswith("celery-worker-")), 1),
                                  "cpu_s_services": round(sum(v for k, v in cpu.items() if not k.startswith("celery-worker-")), 1),
                                  "cpu_s_by_service": {k: round(v, 1) for k, v in cpu.items() if not k.startswith("celery-worker-")},
                                  "local_tasks": sum(t["task_id"].endswith(".local") for t in ran), **routing}), flush=True)
    return spans


def cpu_seconds(stack) -> dict[str, float]:
    """CPU seconds each service's process group has used so far (its live processes' own and
    their reaped children's: a Celery worker's task processes count for that worker)."""
    from dlagent_dev import procs

    tick, used = os.sysconf("SC_CLK_TCK"), {}
    for name, process in stack.processes.items():
        total = 0
        for member in procs.group_members(process.pid):
            try:
                fields = Path(f"/proc/{member.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        used[name] = total / tick
    return used


def serial_stretches(tasks: list[dict], stamp) -> list[dict]:
    """Per round, what ran while no site trained: the wait from the last site's end to the
    aggregation's start, the aggregation itself, and the wait from its end to the next round's
    first site (or the setup's end to round 1's first site); seconds. More workers shorten only
    the sites' part, so these bound the speed-up."""
    def ran(prefix: str) -> list[dict]:
        return [t for t in tasks if t["task_id"].startswith(prefix) and t["state"] == "success" and t["start_date"]]

    out, before = [], next(stamp(t["end_date"]) for t in tasks if t["task_id"] == "setup")
    for number in range(1, 100):
        sites, aggregate = ran(f"round_{number:02d}.local"), ran(f"round_{number:02d}.aggregate")
        if not sites or not aggregate:
            break
        first, last = min(stamp(t["start_date"]) for t in sites), max(stamp(t["end_date"]) for t in sites)
        start, end = stamp(aggregate[0]["start_date"]), stamp(aggregate[0]["end_date"])
        out.append({"round": number, "to_first_site_s": round(first - before, 1), "sites_s": round(last - first, 1),
                    "to_aggregate_s": round(start - last, 1), "aggregate_s": round(end - start, 1)})
        before = end
    return out


def site_routing(stack, run_id: str, tasks: list[dict], site_queues: list[str], worker_queues: tuple[str, ...]) -> dict:
    """Which Celery worker ran each site task (its log) and on which queue (the task
    instance), checked against ``site_queues``: a site task anywhere else stops the benchmark."""
    site_tasks = sorted({t["task_id"] for t in tasks if t["task_id"] == "check_site" or t["task_id"].endswith(".local")})
    wrong, workers_used = [], {}
    for task_id in site_tasks:
        ran_on = stack.celery_worker_of(run_id, task_id)
        for t in (t for t in tasks if t["task_id"] == task_id and t["state"] == "success"):
            site = t["map_index"]
            worker = ran_on.get(site)
            allowed = [f"celery-worker-{w + 1}" for w, queues in enumerate(worker_queues) if site_queues[site] in queues.split(",")]
            workers_used.setdefault(site, set()).add(worker)
            if t.get("queue") != site_queues[site] or worker not in allowed:
                wrong.append(f"{task_id}[{site}] on queue {t.get('queue')!r}, worker {worker} (site queue {site_queues[site]!r}: {allowed})")
    if wrong:
        raise SystemExit("site tasks ran outside their site's queue or worker:\n  " + "\n  ".join(wrong))
    return {"site_tasks_checked": sum(len(stack.celery_worker_of(run_id, t)) for t in site_tasks),
            "worker_of_site": {site: sorted(w for w in used if w) for site, used in sorted(workers_used.items())}}


def measure_workers(dataset: str, data_roots: list[str], rounds: int, local_epochs: int, reps: int, services: str = "own-core") -> dict:
    from dlagent_dev import leftovers

    cpus = sorted(os.sched_getaffinity(0))
    pinned = ((cpus[0],), (cpus[1],)) if len(cpus) >= 2 else None
    conf = {"dataset": dataset, "model": "cnn", "n_shards": SHARDS, "rounds": rounds, "local_epochs": local_epochs,
            "agent_policy": "off", "seed": 0, "experiment_name": "federated_workers", "compression_candidates": [{"quantization": "dynamic"}],
            "site_queues": [f"site_{'ab'[i % 2]}" for i in range(SHARDS)]}
    print(f"conf: {json.dumps(conf)}; Celery workers pinned to CPUs {pinned}; services: {services}", flush=True)
    session = leftovers.begin_session(PROJECT_DIR)  # every process started from here on carries its mark
    try:
        one = rounds_span(1, conf, reps=reps, broker_db=13, cpus=pinned, data_roots=data_roots, services=services)
        two = rounds_span(2, conf, reps=reps, broker_db=14, cpus=pinned, data_roots=data_roots, services=services)
    finally:
        left = leftovers.end_session(session)
        if left:
            print(leftovers.report(left, "processes the benchmark left running (now stopped)"), file=sys.stderr, flush=True)
    from dlagent_dev.stats import interval

    median_1, median_2 = sorted(one)[len(one) // 2], sorted(two)[len(two) // 2]
    speedup = median_1 / median_2
    speedups = [a / b for a, b in zip(one, two, strict=True)]  # repetition i of each worker count
    spread = interval(speedups) if len(speedups) > 1 else None
    print(f"rounds' wall time, median (all): 1 worker {median_1:.1f} s {[round(x, 1) for x in one]}, "
          f"2 workers {median_2:.1f} s {[round(x, 1) for x in two]}: speed-up {speedup:.2f} (goal >= 1.6); "
          f"per repetition {[round(x, 3) for x in speedups]}" + (f", mean {spread['mean']} 95 % interval {spread['ci95']}" if spread else ""))
    return {"speedup_2_workers": round(speedup, 3), "speedups_2_workers": [round(x, 3) for x in speedups],
            "speedup_ci95": spread["ci95"] if spread else None, "rounds_s_1_worker": [round(x, 1) for x in one],
            "rounds_s_2_workers": [round(x, 1) for x in two], "services": services, "workers_conf": conf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(PROJECT_DIR.parent / "shared" / "data" / "mnist-t10k"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="bundled digits, seed 0, 3 rounds of 1 epoch")
    parser.add_argument("--parts", nargs="+", choices=["accuracy", "workers"], default=["accuracy", "workers"])
    parser.add_argument("--reps", type=int, default=3, help="DAG runs per worker count (workers part)")
    parser.add_argument("--services", choices=["own-core", "shared"], default="own-core",
                        help="workers part: where Airflow's and MLflow's services run with one worker (see above)")
    args = parser.parse_args()
    if args.quick:
        dataset, seeds, rounds, local_epochs = "digits", [0], 3, 1
    else:
        if not Path(args.data).is_dir():
            sys.exit(f"--data {args.data!r} is not a folder: give the MNIST IDX folder, e.g. ../shared/data/mnist-t10k")
        dataset, seeds, rounds, local_epochs = f"mnist-idx:{Path(args.data).resolve()}", args.seeds, args.rounds, args.local_epochs
    roots = [str(Path(args.data).resolve())]
    if args.parts == ["workers"]:
        print("RESULT " + json.dumps(measure_workers(dataset, roots, 3, 2, args.reps, args.services)))
        return
    from dlagent.ml.data import load_dataset
    from dlagent_dev.stats import interval

    rows = []
    for seed in seeds:
        splits = load_dataset(dataset, seed=seed, allowed_roots=roots)
        for arm in ARMS:
            row = run_arm(arm, splits, seed=seed, rounds=rounds, local_epochs=local_epochs)
            rows.append(row)
            print(f"seed {seed} {arm:<13} test accuracy {row['test_accuracy']:.4f}  {row['seconds']:6.1f} s"
                  + (f"  val by round {row['val_by_round']}" if "val_by_round" in row else ""), flush=True)
    by = {arm: {r["seed"]: r for r in rows if r["arm"] == arm} for arm in ARMS}
    print(f"\n{dataset}, {SHARDS} shards, {rounds} rounds x {local_epochs} local epochs (central: {rounds * local_epochs} epochs), "
          f"seeds {seeds}; mean and 95 % interval over seeds:")
    summary = {}
    for arm in ARMS:
        accuracy = interval([by[arm][s]["test_accuracy"] for s in seeds])
        summary[arm] = accuracy["mean"]
        line = f"  {arm:<13} test accuracy {accuracy['mean']:.4f} {accuracy['ci95']}"
        if arm != "central":
            gap = interval([100 * (by[arm][s]["test_accuracy"] - by["central"][s]["test_accuracy"]) for s in seeds])
            summary[f"{arm}_gap_points"] = gap["mean"]
            summary[f"{arm}_gap_ci95"] = gap["ci95"]
            line += f"   minus central {gap['mean']:+.2f} points {gap['ci95']}"
        print(line)
    bytes_per_round = by["fedavg_iid"][seeds[0]]["bytes_per_round"]
    print(f"  bytes exchanged per round (all {SHARDS} sites, both directions): {bytes_per_round:,}")
    goals = {"iid_within_1_point": summary["fedavg_iid_gap_points"] >= -1.0,
             "skew_within_3_points": max(summary["fedavg_skew_gap_points"], summary["fedprox_skew_gap_points"]) >= -3.0}
    workers = measure_workers(dataset, roots, 3, 2, args.reps, args.services) if "workers" in args.parts and not args.quick else {}
    if workers:
        goals["two_workers_1_6x"] = workers["speedup_2_workers"] >= 1.6
    print(f"  goals: {goals}")
    print("RESULT " + json.dumps({"central_acc": summary["central"], "fedavg_iid_acc": summary["fedavg_iid"],
                                  "fedavg_skew_acc": summary["fedavg_skew"], "fedprox_skew_acc": summary["fedprox_skew"],
                                  "bytes_per_round": bytes_per_round, "seeds": seeds, "dataset": dataset, "rounds": rounds,
                                  "local_epochs": local_epochs, **{k: v for k, v in summary.items() if "gap" in k}, **workers,
                                  "goals": goals}))


if __name__ == "__main__":
    main()
