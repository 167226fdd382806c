"""Benchmark: the default pipeline on regression tables against scikit-learn baselines.

    .venv/bin/python bench/regression.py

**Pipeline**: ``dl_agent_pipeline`` through ``airflow dags test``, as a user runs it, with only
what a regression table needs set: ``dataset`` (a CSV), ``task: regression``, ``model: mlp``
(the built-in for tables), ``seed``. Everything else is the default: the primary metric rmse,
6 tuning trials over the default space, the rules agent's plan (warm start from the best
trial), the four default compression candidates and the gate. The figure is the RMSE of what
the run **ships** (the gated candidate, a TFLite file) on its held-out test split.

**Baselines**, fitted in the same run on the same train/validation/test split (the pipeline's
``load_dataset`` with the same seed), each with the settings a person would try, chosen on the
validation split:

- ``ridge``: standardised features, ridge regression, alpha in 10^-3 .. 10^3;
- ``mlp``: standardised features and targets (``TransformedTargetRegressor``), scikit-learn's
  ``MLPRegressor`` with one or two hidden layers of 64 or 128 units, L2 alpha 1e-4 or 1e-2,
  early stopping.

**Data** (offline): scikit-learn's bundled diabetes table (442 rows, 10 features), Friedman #1
(``make_friedman1``: 1,000 rows, 10 features of which 5 matter, noise 1.0) and Friedman #3
(``make_friedman3``: 1,000 rows, 4 features, an arctan of their products, noise 0.1), saved
as CSV files in a temporary data root.

**Held out**: the ``mlp``'s dropout was moved from its input columns to its hidden layer after
a first measurement on diabetes and Friedman #1 with seeds 21-23 (and the digits with seeds
0-2); the default seeds here (31-33) and Friedman #3 were not used for that choice.

Per data set: the mean RMSE over the seeds and a 95 % t-interval; ``rmse_ratio`` is the
pipeline's RMSE over the best baseline's, per seed. The last line is ``RESULT {json}`` with
``worst_rmse_ratio``, the largest mean ratio over the data sets. Goal: at most 1.05.
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
GOAL = 1.05


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33], help="split and weight seeds (at least 3)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    return parser.parse_args(argv)


DATASETS = ("diabetes", "friedman1", "friedman3")


def write_csv(name: str, folder: Path) -> Path:
    import numpy as np
    from sklearn.datasets import load_diabetes, make_friedman1, make_friedman3

    if name == "diabetes":
        bunch = load_diabetes()
        x, y = bunch.data, bunch.target
    elif name == "friedman1":
        x, y = make_friedman1(n_samples=1000, noise=1.0, random_state=7)
    else:
        x, y = make_friedman3(n_samples=1000, noise=0.1, random_state=7)
    path = folder / f"{name}.csv"
    header = ",".join([*(f"x{i}" for i in range(x.shape[1])), "label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")
    return path


def baselines(path: Path, seed: int, root: Path) -> dict:
    """Test RMSE of the ridge and MLP baselines (``dlagent_dev.baselines``) on the pipeline's split."""
    from dlagent.ml.data import load_dataset
    from dlagent_dev.baselines import fit_baselines

    return fit_baselines(load_dataset(f"csv:{path}", task="regression", seed=seed, allowed_roots=[str(root)]), seed)


def run_pipeline(path: Path, seed: int, workdir: Path, root: Path) -> dict:
    """The default pipeline through ``airflow dags test``; the shipped model's test RMSE from MLflow."""
    from dlagent_dev.benchrun import run_default_pipeline

    conf = {"dataset": f"csv:{path}", "task": "regression", "model": "mlp", "seed": seed, "experiment_name": "bench-regression",
            "model_name": f"bench-{path.stem}-{seed}"}
    run = run_default_pipeline(conf, workdir, root)
    return {"rmse": run["test_metric"], "keras_rmse": run["keras_test_metric"], "candidate": run["candidate"],
            "deploy": run["deploy"], "seconds": run["seconds"]}


def main(argv=None) -> int:
    from dlagent_dev.stats import interval

    args = parse_args(argv)
    if len(args.seeds) < 3:
        print("[bench] give at least 3 seeds", file=sys.stderr)
        return 2
    started = time.perf_counter()
    per_dataset, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-regression-") as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for name in args.datasets:
            path = write_csv(name, root)
            ratios = []
            for seed in args.seeds:
                base = baselines(path, seed, root)
                pipeline = run_pipeline(path, seed, Path(tmp) / f"{name}-{seed}", root)
                best_name = min(base, key=base.get)
                ratio = pipeline["rmse"] / base[best_name]
                ratios.append(ratio)
                row = {"dataset": name, "seed": seed, "pipeline_rmse": pipeline["rmse"], **{f"{k}_rmse": v for k, v in base.items()},
                       "best_baseline": best_name, "rmse_ratio": ratio, **{k: v for k, v in pipeline.items() if k != "rmse"}}
                rows.append(row)
                print(f"[bench] {name} seed {seed}: pipeline {pipeline['rmse']:.4g} (shipped {pipeline['candidate']}, Keras "
                      f"{pipeline['keras_rmse']:.4g}), ridge {base['ridge']:.4g}, mlp {base['mlp']:.4g}: ratio {ratio:.3f} "
                      f"({pipeline['seconds']:.0f} s)", flush=True)
            mine = [r["pipeline_rmse"] for r in rows if r["dataset"] == name]
            per_dataset[name] = {"pipeline_rmse": interval(mine),
                                 "ridge_rmse": interval([r["ridge_rmse"] for r in rows if r["dataset"] == name]),
                                 "mlp_rmse": interval([r["mlp_rmse"] for r in rows if r["dataset"] == name]),
                                 "rmse_ratio": interval(ratios)}
    worst = max(d["rmse_ratio"]["mean"] for d in per_dataset.values())
    for name, figures in per_dataset.items():
        print(f"[bench] {name}: pipeline {figures['pipeline_rmse']['mean']:.4g} ± {figures['pipeline_rmse']['std']:.3g}, ridge "
              f"{figures['ridge_rmse']['mean']:.4g}, mlp {figures['mlp_rmse']['mean']:.4g}; ratio {figures['rmse_ratio']['mean']:.3f} "
              f"(95% CI {figures['rmse_ratio']['ci95']})")
    result = {"worst_rmse_ratio": round(worst, 4), "goal": GOAL, "goal_met": bool(worst <= GOAL), "per_dataset": per_dataset,
              "seeds": args.seeds, "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
