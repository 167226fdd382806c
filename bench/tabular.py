"""Benchmark: the default pipeline on tables against scikit-learn baselines.

    .venv/bin/python bench/tabular.py

**Pipeline**: ``dl_agent_pipeline`` through ``airflow dags test``, as a user runs it, with only
what a table needs set: ``dataset`` (a CSV), ``model: mlp`` (the built-in for tables),
``seed``, and where the data asks for it ``task: regression`` or ``missing: impute``.
Everything else is the default: the primary metric (accuracy, or rmse), 6 tuning trials, the
rules agent's plan, the default compression candidates and the gate. The figure is the score
of what the run **ships** (a TFLite file) on its held-out test split.

**Baselines**, fitted in the same run on the same train/validation/test split (the pipeline's
``load_dataset`` with the same seed, so the same rows; a categorical column is one-hot with
the training split's vocabulary, as scikit-learn's ``OneHotEncoder`` would), each with the
settings a person would try, chosen on the validation split, all after median imputation
with was-missing indicators and standardisation:

- classification: ``logistic`` regression with C in 10^-3 .. 10^3; scikit-learn's ``mlp``
  (one or two hidden layers of 64 or 128 units, L2 alpha 1e-4 or 1e-2, early stopping);
- regression: ``ridge`` with alpha in 10^-3 .. 10^3; the ``mlp`` regressor, targets standardised.

**Data** (offline): scikit-learn's bundled breast cancer table (569 rows, 30 columns on
scales from 0.001 to 2,500), wine (178 rows, 13 columns), a synthetic customer table (1,500
rows: three categorical columns, two numeric columns of very different scales, 4 % empty
cells, ``missing: impute``; the class depends on a category and on the numbers) and, for
regression, the diabetes table (442 rows).

**Held out**: nothing in the defaults was chosen on these data sets or on the seeds 41-43.
Seeds 44-46 (``--seeds 44 45 46``) are a second held-out set, added on 2026-12-05 (fifth session)
after 41-43 missed the goals: the verdict stays with 41-43; the second set is reported alone and
pooled with the first (``dlagent_dev.stats.pooled``) as a more precise estimate, not a second try.

Per data set: the mean score over the seeds and a 95 % t-interval; ``gap_points`` is, per
seed, how many points the pipeline is below the best baseline (accuracy: 0.01 = 1 point;
rmse: 1 % of the baseline's RMSE). The last line is ``RESULT {json}`` with
``worst_gap_points``, the largest mean gap over the classification sets, and
``worst_rmse_gap_percent`` for regression. Goals: at most 1 point, and at most 5 %.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
GOAL_POINTS, GOAL_RMSE_PERCENT = 1.0, 5.0
CLASSIFICATION_SETS, REGRESSION_SETS = ("breast_cancer", "wine", "customers"), ("diabetes",)
DATASETS = CLASSIFICATION_SETS + REGRESSION_SETS
#: Tables for choosing defaults (with seeds 1-3), never judged: `--datasets iris scaled_blobs linear_noisy`.
DEV_SETS = ("iris", "scaled_blobs", "linear_noisy")
DEV_REGRESSION_SETS = ("linear_noisy",)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[41, 42, 43], help="split and weight seeds (at least 3)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS + DEV_SETS),
                        help=f"judged: {', '.join(DATASETS)} (the default); for choosing defaults only: {', '.join(DEV_SETS)}")
    return parser.parse_args(argv)


def write_csv(name: str, folder: Path) -> tuple[Path, dict]:
    """The data set as a CSV in the data root, and the conf entries it needs."""
    import numpy as np
    from sklearn import datasets
    from sklearn.utils import Bunch

    path = folder / f"{name}.csv"
    if name == "customers":
        return _write_customers(path), {"missing": "impute"}
    if name == "linear_noisy":  # a line under heavy noise: 450 rows, 10 columns on scales 0.01..100, 6 informative
        x, y = datasets.make_regression(n_samples=450, n_features=10, n_informative=6, noise=40.0, random_state=11)
        bunch = Bunch(data=x * np.logspace(-2, 2, 10), target=y)
    elif name == "scaled_blobs":
        x, y = datasets.make_classification(600, 12, n_informative=6, n_classes=3, n_clusters_per_class=2, flip_y=0.03,
                                            random_state=2027)
        bunch = Bunch(data=x * np.logspace(-3, 3, 12), target=y)  # columns on scales 0.001 .. 1,000
    else:
        bunch = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "diabetes": datasets.load_diabetes,
                 "iris": datasets.load_iris}[name]()
    header = ",".join([*(f"x{i}" for i in range(bunch.data.shape[1])), "label"])
    fmt = "%.6g" if name in REGRESSION_SETS + DEV_REGRESSION_SETS else ["%.6g"] * bunch.data.shape[1] + ["%d"]
    np.savetxt(path, np.column_stack([bunch.data, bunch.target]), delimiter=",", header=header, comments="", fmt=fmt)
    return path, ({"task": "regression"} if name in REGRESSION_SETS + DEV_REGRESSION_SETS else {})


def _write_customers(path: Path, n: int = 1500) -> Path:
    """A synthetic table nobody tuned on: plan and region (categorical), income in the tens of
    thousands, a usage ratio near 0.1, a free-text-like channel column with a long tail; the class
    (churned or not) is a noisy function of plan, income and usage; 4 % of cells empty."""
    import numpy as np

    rng = np.random.default_rng(2026)
    plans = rng.choice(["basic", "plus", "pro", "family"], n, p=[0.4, 0.3, 0.2, 0.1])
    regions = rng.choice(["north", "south", "east", "west", "centre"], n)
    channels = rng.choice([f"partner-{i}" for i in range(30)] + ["web", "store"], n)
    income = rng.lognormal(10.5, 0.5, n)
    usage = rng.normal(0.1, 0.03, n)
    logit = (1.5 * (plans == "basic") - 1.0 * (plans == "pro") + 2.0 * (np.log(income) - 10.5) - 25 * (usage - 0.1)
             + 0.3 * (regions == "south") + rng.normal(0, 0.7, n))
    churned = (logit > 0.2).astype(int)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["plan", "region", "channel", "income", "usage", "churned"])
        for row in zip(plans, regions, channels, income, usage, churned, strict=True):
            cells = [row[0], row[1], row[2], f"{row[3]:.2f}", f"{row[4]:.4f}"]
            cells = ["" if rng.random() < 0.04 else c for c in cells]
            writer.writerow([*cells, row[5]])
    return path


def baselines(path: Path, options: dict, seed: int, root: Path) -> dict:
    """Test scores of the baselines (``dlagent_dev.baselines``) on the pipeline's split of ``path``."""
    from dlagent.ml.data import load_dataset_with_options
    from dlagent_dev.baselines import fit_baselines

    splits = load_dataset_with_options(f"csv:{path}", {**options, "label_column": "churned" if "customers" in path.name else "label"},
                                       seed=seed, allowed_roots=[str(root)])
    return fit_baselines(splits, seed)


def main(argv=None) -> int:
    from dlagent_dev.benchrun import run_default_pipeline
    from dlagent_dev.stats import interval

    args = parse_args(argv)
    if len(args.seeds) < 3:
        print("[bench] give at least 3 seeds", file=sys.stderr)
        return 2
    started = time.perf_counter()
    per_dataset, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-tabular-") as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for name in args.datasets:
            path, options = write_csv(name, root)
            regression = name in REGRESSION_SETS + DEV_REGRESSION_SETS
            for seed in args.seeds:
                base = baselines(path, options, seed, root)
                conf = {"dataset": f"csv:{path}", "model": "mlp", "seed": seed, "model_name": f"bench-{name}-{seed}",
                        "label_column": "churned" if name == "customers" else "label", **options}
                run = run_default_pipeline(conf, Path(tmp) / f"{name}-{seed}", root)
                best_name = (min if regression else max)(base, key=base.get)
                mine, theirs = run["test_metric"], base[best_name]
                gap = 100 * (mine - theirs) / theirs if regression else 100 * (theirs - mine)  # points (rmse: % of the baseline)
                rows.append({"dataset": name, "seed": seed, "metric": run["metric"], "pipeline": mine, **base,
                             "best_baseline": best_name, "gap_points": gap, **{k: v for k, v in run.items() if k != "test_metric"}})
                print(f"[bench] {name} seed {seed}: pipeline {run['metric']} {mine:.4f} (shipped {run['candidate']}, Keras "
                      f"{run['keras_test_metric'] if run['keras_test_metric'] is not None else float('nan'):.4f}), " + ", ".join(f"{k} {v:.4f}" for k, v in base.items())
                      + f": gap {gap:+.2f} {'% rmse' if regression else 'points'} ({run['seconds']:.0f} s)", flush=True)
            mine = [r for r in rows if r["dataset"] == name]
            per_dataset[name] = {"metric": mine[0]["metric"], "pipeline": interval([r["pipeline"] for r in mine]),
                                 **{k: interval([r[k] for r in mine]) for k in base},
                                 "gap_points": interval([r["gap_points"] for r in mine])}
    for name, figures in per_dataset.items():
        print(f"[bench] {name}: pipeline {figures['metric']} {figures['pipeline']['mean']:.4f} ± {figures['pipeline']['std']:.3g}; "
              f"gap {figures['gap_points']['mean']:+.2f} (95% CI {figures['gap_points']['ci95']})")
    classification = [per_dataset[n]["gap_points"]["mean"] for n in per_dataset if n in CLASSIFICATION_SETS]
    regression = [per_dataset[n]["gap_points"]["mean"] for n in per_dataset if n in REGRESSION_SETS]
    worst, worst_rmse = (max(classification) if classification else None), (max(regression) if regression else None)
    met = ((worst is None or worst <= GOAL_POINTS) and (worst_rmse is None or worst_rmse <= GOAL_RMSE_PERCENT)
           if classification or regression else None)  # only tables for choosing defaults ran: nothing is judged
    result = {"worst_gap_points": worst, "worst_rmse_gap_percent": worst_rmse, "goal_points": GOAL_POINTS,
              "goal_rmse_percent": GOAL_RMSE_PERCENT, "goal_met": met if met is None else bool(met), "per_dataset": per_dataset, "seeds": args.seeds,
              "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
