"""Diagnostic: the ``mlp``'s depth on small tables, against standardised logistic regression.

    .venv/bin/python bench/table_depth.py                                  # breast cancer, iris, scaled blobs; seeds 1-10
    .venv/bin/python bench/table_depth.py --datasets breast_cancer --seeds 1 2 3

Why: ``bench/tabular.py`` finds the default pipeline about a point behind logistic regression
on scikit-learn's breast cancer table (pooled over its held-out seeds 41-46), and the built-in
``mlp`` had one hidden layer, always. ``hidden_layers`` (0 = a linear model on the standardised
columns) now lets a person choose. This measures what each depth gives, with the product's
``dlagent.ml.training.fit`` and no Airflow, on tables and seeds for choosing defaults (never
``tabular.py``'s held-out seeds 41-46): per seed the same split as the pipeline's
(``load_dataset`` with the seed) and logistic regression with C chosen on its validation split
(``tabular.baselines``); per arm the test accuracy's mean over the seeds and its gap to the
logistic regression in points (positive: behind) with a 95 % interval. Arms: the ``mlp`` with
every setting at its default (one hidden layer, 20 epochs, learning rate 0.001), and depths 0,
1 and 2 trained longer and faster (``--epochs`` 60, ``--learning-rate`` 0.03, patience 10),
since a linear model on a few hundred rows takes few gradient steps per epoch. The last line is
``RESULT {json}``.
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
DATASETS = ("breast_cancer", "iris", "scaled_blobs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)), help="split and weight seeds (not 41-46)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=["breast_cancer", "iris", "scaled_blobs", "wine"])
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the depth arms (early stopping may end sooner)")
    parser.add_argument("--learning-rate", type=float, default=0.03, help="learning rate of the depth arms")
    return parser.parse_args(argv)


def arms(args) -> dict[str, dict]:
    longer = {"model": "mlp", "epochs": args.epochs, "learning_rate": args.learning_rate, "early_stopping_patience": 10}
    return {"mlp_default": {"model": "mlp"}, **{f"depth_{n}": {**longer, "hidden_layers": n} for n in (0, 1, 2)}}


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path[:0] = [str(PROJECT_DIR / "plugins"), str(PROJECT_DIR / "dev"), str(PROJECT_DIR / "bench")]
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.training import evaluate, fit
    from dlagent_dev.stats import interval
    from tabular import baselines, write_csv

    started, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-depth-") as folder:
        root = Path(folder)
        for name in args.datasets:
            path, options = write_csv(name, root)
            scores = {"logistic": [], **{arm: [] for arm in arms(args)}}
            for seed in args.seeds:
                splits = load_dataset_with_options(f"csv:{path}", {**options, "label_column": "label"}, seed=seed,
                                                   allowed_roots=[str(root)])
                scores["logistic"].append(baselines(path, options, seed, root)["logistic"])
                line = [f"logistic {scores['logistic'][-1]:.4f}"]
                for arm, settings in arms(args).items():
                    result = fit(splits, TrainConfig(**settings, seed=seed))
                    scores[arm].append(float(evaluate(result.model, splits)["test_accuracy"]))
                    line.append(f"{arm} {scores[arm][-1]:.4f} ({result.epochs_run} epochs)")
                print(f"[bench] {name} seed {seed}: " + ", ".join(line), flush=True)
            results[name] = {arm: {"accuracy": interval(values)} for arm, values in scores.items()}
            for arm in arms(args):
                gaps = [100 * (base - own) for base, own in zip(scores["logistic"], scores[arm], strict=True)]
                results[name][arm]["gap_points"] = interval(gaps)
                print(f"[bench] {name} {arm}: accuracy {results[name][arm]['accuracy']['mean']:.4f}, gap to logistic "
                      f"{results[name][arm]['gap_points']['mean']:+.2f} points (95% CI {results[name][arm]['gap_points']['ci95']})",
                      flush=True)
    print("RESULT " + json.dumps({"per_dataset": results, "seeds": args.seeds, "epochs": args.epochs,
                                  "learning_rate": args.learning_rate, "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
