"""Benchmark: memory and speed of the pipeline's ``train`` as a CSV table grows, streamed.

    .venv/bin/python bench/table_scale.py [--sizes 100000 400000 1600000] [--repeats 3]

**Data**: synthetic CSV tables written by this script: 10 numeric columns on very different
scales, one categorical column of 20 values, 1 % empty cells and a 3-class label that depends
on four of the columns (about 85 bytes a row), of 100,000, 400,000 and 1,600,000 rows.

**Pipeline**, in a fresh process per measurement: what the ``train`` task runs with
``missing: impute`` and the data option ``cache: stream`` (the rows go to a scratch file and are
read back a window at a time, :mod:`dlagent.ml.table_rows`): the two passes over the CSV, the
split, the vocabulary and the scaling statistics a chunk at a time, then
:func:`dlagent.ml.training.train` of the ``mlp`` for one epoch (batch 256), logging to an MLflow
store (params, the epoch's metrics, the test evaluation, the model).

**Baseline**, in the same run, on the same file and seed: the same with ``cache: memory`` (the
rows held as a float32 array and fed to ``model.fit`` as arrays, which is what every table did
before streaming): the fastest the pipeline can read rows it holds.

Both arms import TensorFlow before their clocks start. Each figure is measured ``--repeats``
times (seeds 0, 1, 2) in fresh processes; ``peak_rss_mib`` is the process's ``ru_maxrss``, and
``growth_mib`` that less its resident memory once TensorFlow, Keras and MLflow are imported
(what the table and the training cost, without the fixed 750 MiB of the libraries). The
last line is ``RESULT {json}`` with ``rss_ratio_largest_vs_smallest`` (the streamed arm's mean
peak memory at the largest table over that at the smallest; the in-memory arm's beside it) and
``throughput_vs_memory`` (streamed rows per second over in-memory, at the largest size). No
issue sets a goal for tables; the image benchmark's goals (``bench/data_scale.py``: at most 1.25
and at least 0.8) are printed for comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SIZES = (100_000, 400_000, 1_600_000)
GOAL_RSS, GOAL_THROUGHPUT = 1.25, 0.8  # bench/data_scale.py's goals for image folders, for comparison


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process measurements per size and arm (seeds 0..)")
    parser.add_argument("--child", choices=["stream", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_table(path: Path, n: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(n)
    scales = np.array([1, 1e3, 1e-2, 10, 1e5, 0.5, 2, 1e-3, 50, 7])
    cities = [f"city{i:02d}" for i in range(20)]
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([f"f{j}" for j in range(10)] + ["city", "label"])
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            values = rng.normal(size=(m, 10))
            city = rng.integers(0, 20, m)
            score = values[:, 0] + values[:, 1] - values[:, 4] + (city % 3 == 0) + rng.normal(scale=0.5, size=m)
            label = np.digitize(score, [-0.7, 0.7])
            cells = np.char.mod("%.5g", values * scales)
            gaps = rng.random((m, 10)) < 0.01
            cells[gaps] = ""
            for i in range(m):
                out.writerow([*cells[i], cities[city[i]], int(label[i])])
    return path


def child(table: str, workdir: str, seed: int, cache: str) -> dict:
    import keras  # noqa: F401 - TensorFlow's import (5-9 s) is not timed
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.training import train
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")  # the tracking store exists before a task starts
    experiment = client.create_experiment("scale", artifact_location=f"{workdir}/artifacts")
    run_id = client.create_run(experiment).info.run_id
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    splits = load_dataset_with_options(f"csv:{table}", {"missing": "impute", "cache": cache}, seed=seed, allowed_roots=[table])
    loaded = time.perf_counter() - started
    result, _ = train(splits, TrainConfig(model="mlp", epochs=1, batch_size=256, seed=seed), client=client, run_id=run_id)
    client.set_terminated(run_id)
    return {"seconds": time.perf_counter() - started, "load_seconds": loaded, "fit_seconds": result.seconds,
            "n_train": len(splits.y_train), "streamed": splits.summary()["streamed"], "rss_after_imports_mib": imported,
            "val_accuracy": result.history["val_accuracy"][-1]}


def measure(kind: str, table: Path, seed: int, workdir: Path) -> dict:
    from dlagent_dev.benchrun import child_figures

    workdir.mkdir(parents=True, exist_ok=True)
    figures = child_figures(__file__, kind, {"table": table, "workdir": workdir, "seed": seed})
    figures["rows_per_s"] = figures["n_train"] / figures["seconds"]
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        figures = child(args.table, args.workdir, args.seed, args.child)
        figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures))
        return 0
    from dlagent_dev.benchrun import paired_arms
    from dlagent_dev.stats import interval

    started = time.perf_counter()
    rows, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-table-") as tmp:
        for n in args.sizes:
            made = time.perf_counter()
            table = write_table(Path(tmp) / f"table-{n}.csv", n)
            print(f"[bench] wrote {n} rows ({table.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - made:.0f} s", flush=True)
            for seed in range(args.repeats):
                for kind in ("stream", "memory"):
                    figures = measure(kind, table, seed, Path(tmp) / f"work-{n}-{kind}-{seed}")
                    rows.append({"rows": n, "kind": kind, "seed": seed, **figures})
                    print(f"[bench] {n} rows, {kind}, seed {seed}: {figures['rows_per_s']:.0f} rows/s over {figures['seconds']:.1f} s "
                          f"(load {figures['load_seconds']:.1f} s, fit {figures['fit_seconds']:.1f} s), peak RSS "
                          f"{figures['peak_rss_mib']:.0f} MiB ({figures['rss_after_imports_mib']:.0f} after imports), "
                          f"{'streamed' if figures['streamed'] else 'in memory'}, val accuracy {figures['val_accuracy']:.3f}", flush=True)
            table.unlink()
            mine = [r for r in rows if r["rows"] == n and r["kind"] == "stream"]
            theirs = [r for r in rows if r["rows"] == n and r["kind"] == "memory"]
            summary[n] = {**paired_arms(mine, theirs, ("stream", "memory"), "rows_per_s"),
                          "stream_growth_mib": interval([r["peak_rss_mib"] - r["rss_after_imports_mib"] for r in mine]),
                          "memory_growth_mib": interval([r["peak_rss_mib"] - r["rss_after_imports_mib"] for r in theirs])}
            print(f"[bench] {n} rows: streamed {summary[n]['stream_rows_per_s']['mean']:.0f} rows/s, peak "
                  f"{summary[n]['stream_rss_mib']['mean']:.0f} MiB (+{summary[n]['stream_growth_mib']['mean']:.0f} over the imports); in memory {summary[n]['memory_rows_per_s']['mean']:.0f} rows/s, "
                  f"peak {summary[n]['memory_rss_mib']['mean']:.0f} MiB (+{summary[n]['memory_growth_mib']['mean']:.0f}); ratio {summary[n]['throughput_ratio']['mean']:.3f} "
                  f"(95% CI {summary[n]['throughput_ratio']['ci95']})", flush=True)
    small, large = min(summary), max(summary)
    ratio = {kind: summary[large][f"{kind}_rss_mib"]["mean"] / summary[small][f"{kind}_rss_mib"]["mean"] for kind in ("stream", "memory")}
    throughput = summary[large]["throughput_ratio"]["mean"]
    result = {"rss_ratio_largest_vs_smallest": round(ratio["stream"], 3), "memory_arm_rss_ratio": round(ratio["memory"], 3),
              "throughput_vs_memory": round(throughput, 3), "image_goals_for_comparison": [GOAL_RSS, GOAL_THROUGHPUT],
              "sizes": [small, large], "per_size": {str(k): v for k, v in summary.items()},
              "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
