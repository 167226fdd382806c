"""Benchmark: the memory a large CSV costs when the pipeline loads it, against pandas.

    .venv/bin/python bench/csv_memory.py [--rows 2000000] [--repeats 3]

**Data**: a synthetic table written by this script: ``--rows`` rows of 8 numeric columns (on
very different scales), one categorical column of 50 values, 1 % empty cells, and a 3-class
label column (about 75 bytes a row).

**Pipeline**: what every task that reads a ``csv:`` data set runs: ``load_dataset`` with
``missing: impute`` and every other data option at its default (the two streaming passes of
:mod:`dlagent.ml.csv_table`, the checks, the content digest, the stratified split, the one-hot
encoding of the categorical column with the training split's vocabulary). Under the default
``cache: auto`` a table whose encoded splits and loaded rows are over the 256 MiB budget (the
default 2,000,000 rows are) is streamed: its rows stay in a scratch file
(:mod:`dlagent.ml.table_rows`), so the figure is then what loading costs without holding them.

**Baseline**, in the same run, on the same file: ``pandas.read_csv`` (its C parser, default
options), then what a model needs of it: the numeric columns as one float32 array and the
categorical column one-hot (``pandas.get_dummies``) beside them, and the labels as codes.

Each arm runs ``--repeats`` times in a fresh process; memory is the process's peak resident
memory (``ru_maxrss``) less its resident memory after the imports, so the figure is what the
table cost. ``float32_mib`` is the size of the loaded features alone: the least any loader
holding them in memory can use. The last line is ``RESULT {json}`` with both arms' figures and
``peak_ratio_vs_pandas`` (the pipeline's mean over pandas'); no goal is set by an issue.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

arm, path = sys.argv[1], sys.argv[2]
import numpy as np
if arm == "pipeline":
    from dlagent.ml.data import load_dataset
else:
    import pandas as pd
before = rss_mib()
started = time.perf_counter()
if arm == "pipeline":
    splits = load_dataset("csv:" + path, missing="impute", seed=0)
    shape = [int(len(splits.y_train) + len(splits.y_val) + len(splits.y_test)), int(splits.x_train.shape[1])]
else:
    frame = pd.read_csv(path)
    labels = frame.pop("label").astype("category").cat.codes.to_numpy()
    features = pd.get_dummies(frame, columns=["shade"], dtype=np.float32).to_numpy(np.float32)
    shape = list(features.shape)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mib": peak - before, "seconds": seconds, "shape": shape}))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the synthetic table (default 2,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per arm (at least 3 for an interval)")
    return parser.parse_args(argv)


def write_table(path: Path, rows: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    scales = np.array([1, 1e3, 1e-2, 50, 1e5, 3, 0.1, 700], np.float64)
    shades = [f"shade-{i:02d}" for i in range(50)]
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([f"x{j}" for j in range(8)] + ["shade", "label"])
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            numbers = rng.normal(size=(n, 8)) * scales
            gaps = rng.random((n, 9)) < 0.01
            picks = rng.integers(0, 50, n)
            labels = (numbers[:, 0] + picks / 25 > 1).astype(int) + (numbers[:, 2] > 0).astype(int)
            for i in range(n):
                cells = ["" if gaps[i, j] else f"{numbers[i, j]:.5g}" for j in range(8)]
                out.writerow([*cells, "" if gaps[i, 8] else shades[picks[i]], labels[i]])


def measure(arm: str, path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, arm, str(path)], capture_output=True, text=True, check=False,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        raise RuntimeError(f"{arm} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from dlagent_dev.stats import interval

    args = parse_args(argv)
    if args.repeats < 3:
        print("[bench] give at least 3 repeats", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-csv-") as root:
        path = Path(root) / "table.csv"
        write_table(path, args.rows)
        size_mib = path.stat().st_size / 2**20
        print(f"[bench] {args.rows:,} rows, {size_mib:.0f} MiB of CSV", flush=True)
        runs = {"pipeline": [], "pandas": []}
        for repeat in range(args.repeats):
            for arm in runs:  # interleaved, so a slower minute of the machine hits both arms
                runs[arm].append(measure(arm, path))
                print(f"[bench] {arm} #{repeat + 1}: peak +{runs[arm][-1]['peak_mib']:.0f} MiB, "
                      f"{runs[arm][-1]['seconds']:.1f} s, features {runs[arm][-1]['shape']}", flush=True)
    rows, features = runs["pipeline"][0]["shape"]
    float32_mib = rows * features * 4 / 2**20
    peaks = {arm: [r["peak_mib"] for r in values] for arm, values in runs.items()}
    result = {
        "rows": args.rows, "csv_mib": round(size_mib, 1), "float32_mib": round(float32_mib, 1),
        "pipeline_peak_mib": interval(peaks["pipeline"]), "pandas_peak_mib": interval(peaks["pandas"]),
        "peak_ratio_vs_pandas": interval([p / q for p, q in zip(peaks["pipeline"], peaks["pandas"], strict=True)]),
        "pipeline_seconds": interval([r["seconds"] for r in runs["pipeline"]]),
        "pandas_seconds": interval([r["seconds"] for r in runs["pandas"]]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
