"""Diagnostic: the ``mlp``'s architecture on small tables (depth, a linear path, L2, an ensemble), against a linear baseline.

    .venv/bin/python bench/table_mlp.py                                    # depth: breast cancer, iris, scaled blobs; seeds 1-10
    .venv/bin/python bench/table_mlp.py --arms linear_path --seeds $(seq 1 15) \\
        --datasets friedman1 linear_noisy friedman2 iris scaled_blobs      # the linear path, regression included
    .venv/bin/python bench/table_mlp.py --arms l2 --datasets linear_noisy friedman1 iris   # the L2 penalty
    .venv/bin/python bench/table_mlp.py --arms ensemble --datasets linear_noisy friedman1 friedman2 iris scaled_blobs

Why: ``bench/tabular.py`` finds the default pipeline about a point behind logistic regression
on scikit-learn's breast cancer table and a few per cent of RMSE behind on the diabetes table
(its held-out seeds 41-46). This measures what an architecture setting (depth, a linear path, an
L2 penalty, an ensemble) gives, with the product's
``dlagent.ml.training.fit`` and no Airflow, on tables and seeds for choosing defaults (never
``tabular.py``'s held-out seeds or its diabetes table): per seed the same split as the
pipeline's (``load_dataset`` with the seed) and the linear baseline of ``dlagent_dev.baselines``
(logistic regression with C, or ridge with alpha, chosen on the validation split); per arm the
test score's mean over the seeds and its gap to that baseline with a 95 % interval (points of
accuracy, or % of the baseline's RMSE; positive: behind), and for ``--arms linear_path`` the
paired difference of each linear-path arm from the plain arm at the same learning rate.

Arm sets: ``depth``: the ``mlp`` with every setting at its default (one hidden layer, 20 epochs,
learning rate 0.001), and depths 0, 1 and 2 trained longer and faster (60 epochs, rate 0.03,
patience 10), since a linear model on a few hundred rows takes few gradient steps per epoch.
``linear_path``: the default ``mlp`` with and without ``linear_path`` at learning rates 0.001
(the default) and 0.01 (about what the tuning trials choose on these tables). ``l2``: the
default ``mlp`` at learning rate 0.01 with the L2 penalty ``l2`` at 0 (off), 1e-4, 1e-3, 1e-2
and 0.1. ``ensemble``: the default ``mlp`` at learning rate 0.01 averaging 1, 3 and 5 networks
(``ensemble``; 1 is one network).

Regression tables for choosing defaults: Friedman #1 (500 rows, 10 columns of which 5 matter,
noise 1), a linear table with heavy noise (450 rows, 10 columns on scales 0.01..100, 6 of them
informative, noise 40: a line is all there is to learn, and ridge is hard to beat, as on
diabetes) and Friedman #2 (500 rows, 4
columns, noise 50). The last line is ``RESULT {json}``.
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
CLASSIFICATION_SETS = ("breast_cancer", "iris", "scaled_blobs", "wine")
REGRESSION_SETS = ("friedman1", "linear_noisy", "friedman2")
ARM_SETS = ("depth", "linear_path", "l2", "ensemble")
ENSEMBLE_SIZES = (1, 3, 5)
L2_VALUES = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="depth", choices=ARM_SETS, help="which settings to compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)), help="split and weight seeds (not 41-46)")
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "iris", "scaled_blobs"],
                        choices=CLASSIFICATION_SETS + REGRESSION_SETS)
    return parser.parse_args(argv)


def arms(arm_set: str) -> dict[str, dict]:
    if arm_set == "ensemble":
        return {f"ensemble_{n}": {"model": "mlp", "learning_rate": 0.01, "ensemble": n} for n in ENSEMBLE_SIZES}
    if arm_set == "l2":
        return {f"l2_{value:g}": {"model": "mlp", "learning_rate": 0.01, "l2": value} for value in L2_VALUES}
    if arm_set == "linear_path":
        return {f"{path}_lr{rate}": {"model": "mlp", "learning_rate": rate, "linear_path": path == "linear"}
                for rate in (0.001, 0.01) for path in ("plain", "linear")}
    longer = {"model": "mlp", "epochs": 60, "learning_rate": 0.03, "early_stopping_patience": 10}
    return {"mlp_default": {"model": "mlp"}, **{f"depth_{n}": {**longer, "hidden_layers": n} for n in (0, 1, 2)}}


def write_table(name: str, folder: Path) -> tuple[Path, dict]:
    """A table for choosing defaults as a CSV in the data root, and the conf entries it needs."""
    if name in CLASSIFICATION_SETS or name == "linear_noisy":
        from tabular import write_csv

        return write_csv(name, folder)
    import numpy as np
    from sklearn.datasets import make_friedman1, make_friedman2

    if name == "friedman1":
        x, y = make_friedman1(n_samples=500, noise=1.0, random_state=11)
    else:
        x, y = make_friedman2(n_samples=500, noise=50.0, random_state=11)
    path = folder / f"{name}.csv"
    header = ",".join([*(f"x{i}" for i in range(x.shape[1])), "label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")
    return path, {"task": "regression"}


def gap(regression: bool, baseline: float, own: float) -> float:
    """How far ``own`` is behind ``baseline``: % of its RMSE, or points of accuracy."""
    return 100 * (own - baseline) / baseline if regression else 100 * (baseline - own)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path[:0] = [str(PROJECT_DIR / "plugins"), str(PROJECT_DIR / "dev"), str(PROJECT_DIR / "bench")]
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.training import evaluate, fit
    from dlagent_dev.baselines import fit_baselines
    from dlagent_dev.stats import interval

    started, results, settings = time.perf_counter(), {}, arms(args.arms)
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-mlp-") as folder:
        root = Path(folder)
        for name in args.datasets:
            path, options = write_table(name, root)
            regression = options.get("task") == "regression"
            linear = "ridge" if regression else "logistic"
            score_key = "test_rmse" if regression else "test_accuracy"
            scores = {linear: [], **{arm: [] for arm in settings}}
            for seed in args.seeds:
                splits = load_dataset_with_options(f"csv:{path}", {**options, "label_column": "label"}, seed=seed,
                                                   allowed_roots=[str(root)])
                scores[linear].append(fit_baselines(splits, seed)[linear])
                line = [f"{linear} {scores[linear][-1]:.4g}"]
                for arm, arm_settings in settings.items():
                    result = fit(splits, TrainConfig(**arm_settings, seed=seed))
                    scores[arm].append(float(evaluate(result.model, splits)[score_key]))
                    line.append(f"{arm} {scores[arm][-1]:.4g} ({result.epochs_run} epochs)")
                print(f"[bench] {name} seed {seed}: " + ", ".join(line), flush=True)
            unit = "% rmse" if regression else "points"
            results[name] = {arm: {score_key: interval(values)} for arm, values in scores.items()}
            for arm in settings:
                results[name][arm]["gap"] = interval([gap(regression, b, o) for b, o in zip(scores[linear], scores[arm], strict=True)])
                print(f"[bench] {name} {arm}: {score_key} {results[name][arm][score_key]['mean']:.4g}, gap to {linear} "
                      f"{results[name][arm]['gap']['mean']:+.2f} {unit} (95% CI {results[name][arm]['gap']['ci95']})", flush=True)
                plain = arm.replace("linear_", "plain_")
                if arm.startswith("linear_") and plain in settings:  # paired: the linear path's own effect
                    results[name][arm]["vs_plain"] = interval([gap(regression, p, o) for p, o in zip(scores[plain], scores[arm], strict=True)])
                    print(f"[bench] {name} {arm} against {plain}: {results[name][arm]['vs_plain']['mean']:+.2f} {unit} "
                          f"(95% CI {results[name][arm]['vs_plain']['ci95']}; negative: the linear path is better)", flush=True)
    print("RESULT " + json.dumps({"arms": args.arms, "per_dataset": results, "seeds": args.seeds,
                                  "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
