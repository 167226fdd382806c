"""Optuna (TPE + Hyperband) against a full grid search, on the same CNN, data and ranges.

The grid trains every combination of 3 learning rates x 3 batch sizes x 3 epoch counts, each
from scratch with early stopping off, and picks the best validation accuracy. Optuna searches
the same ranges (learning rate log-uniform, batch size categorical, epochs as Hyperband's
max_resource) under an epoch budget of 20% of the grid's epochs, through the real tuning
worker (``dlagent.ml.tuning.run_worker``, SQLite study). A third run, TPE with pruning off and
the same number of trials, shows what pruning saves. Test accuracy is measured on the held-out
split for the configuration each method picked by validation accuracy.

    .venv/bin/python bench/hpo_vs_grid.py                      # ../shared/data/mnist-t10k
    .venv/bin/python bench/hpo_vs_grid.py --quick              # a small smoke run (minutes)

Goals: Optuna within 0.2 points of the grid's best test accuracy with <= 20% of its epochs;
pruning saves >= 50% of the epochs with a best validation value no worse than 0.1 points.
The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "plugins"))

FULL = {
    "learning_rates": [1e-3, 3e-3, 1e-2],
    "batch_sizes": [32, 64, 128],
    "epochs": [3, 6, 9],  # Hyperband rungs with min_resource 1 and factor 3: 1, 3, 9 epochs
    "max_samples": None,
    "budget_fraction": 0.20,
}
QUICK = {
    "learning_rates": [1e-3, 1e-2],
    "batch_sizes": [64, 128],
    "epochs": [1, 3],
    "max_samples": 2000,
    "budget_fraction": 0.5,  # 20% of a 16-epoch grid is not even one trial
}
# The same CNN for every method: dlagent's "cnn" with 16 filters (32 doubles the time on 2 cores).
BASE = {"model": "cnn", "filters": 16, "units": 128, "dropout": 0.2, "optimizer": "adam", "early_stopping_patience": 0, "seed": 0}
N_STARTUP_TRIALS = 5  # TPE samples at random for the first trials, then models the good ones


def run_grid(splits, plan) -> dict:
    import keras
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.training import evaluate, fit

    started = time.perf_counter()
    rows = []
    for lr, batch, epochs in itertools.product(plan["learning_rates"], plan["batch_sizes"], plan["epochs"]):
        result = fit(splits, TrainConfig(**BASE, learning_rate=lr, batch_size=batch, epochs=epochs))
        val = result.history["val_accuracy"][-1]
        test = evaluate(result.model, splits)["test_accuracy"]
        rows.append({"learning_rate": lr, "batch_size": batch, "epochs": epochs, "val_accuracy": val, "test_accuracy": test, "epochs_run": result.epochs_run})
        print(f"  grid lr={lr:<7g} batch={batch:<4} epochs={epochs:<3} val={val:.4f} test={test:.4f}  ({time.perf_counter() - started:6.0f} s)", flush=True)
        keras.backend.clear_session()
    best = max(rows, key=lambda r: r["val_accuracy"])  # first of equals: the grid's order
    return {
        "best_val_accuracy": best["val_accuracy"], "best_test_accuracy": best["test_accuracy"],
        "best_params": {k: best[k] for k in ("learning_rate", "batch_size", "epochs")},
        "epochs": sum(r["epochs_run"] for r in rows), "trials": len(rows), "seconds": time.perf_counter() - started,
    }


def run_optuna(splits, plan, workdir: Path, name: str, pruner: str, *, n_trials: int, max_epochs: int | None) -> dict:
    from dlagent.ml import tuning
    from dlagent.ml.config import TrainConfig

    space = {
        "learning_rate": {"type": "float", "low": min(plan["learning_rates"]), "high": max(plan["learning_rates"]), "log": True},
        "batch_size": {"type": "categorical", "choices": list(plan["batch_sizes"])},
    }
    max_resource = max(plan["epochs"])
    url = f"sqlite:///{workdir / name}.db"
    started = time.perf_counter()
    tuning.create_study(url, name, tuning.StudySettings(space=space, sampler="tpe", pruner=pruner, seed=0, min_resource=1,
                                                       max_resource=max_resource, n_startup_trials=N_STARTUP_TRIALS))
    tuning.run_worker(tuning.WorkerSettings(storage_url=url, study_name=name, base_config=TrainConfig(**BASE, epochs=max_resource),
                                            n_trials=n_trials, max_epochs=max_epochs, record_test_accuracy=True), splits)
    seconds = time.perf_counter() - started
    summary = tuning.study_summary(url, name)
    for trial in tuning.load_study(url, name).get_trials():
        value = f"val={trial.value:.4f}" if trial.value is not None else ""
        print(f"  {name} trial {trial.number:<2} {trial.state.name:<8} epochs={tuning.trial_epochs(trial):<2} "
              f"lr={trial.params.get('learning_rate', 0):.5f} batch={trial.params.get('batch_size')} {value}")
    return {
        "best_val_accuracy": summary["best_value"], "best_test_accuracy": summary.get("best_test_accuracy"),
        "best_params": summary["best_params"], "epochs": summary["epochs_total"], "trials": summary["n_finished"],
        "by_state": summary["n_trials"], "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/mnist-t10k", help="MNIST IDX folder (default: ../shared/data/mnist-t10k)")
    parser.add_argument("--quick", action="store_true", help="a small grid and budget on 2,000 samples: a smoke run, not the figures")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"--data {args.data!r}: no such folder. Give the MNIST IDX folder (t10k-images-idx3-ubyte.gz, "
              "t10k-labels-idx1-ubyte.gz), e.g. --data ../shared/data/mnist-t10k, run from the project folder.", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dlagent.ml.data import load_dataset

    plan = QUICK if args.quick else FULL
    total_started = time.perf_counter()
    splits = load_dataset(f"mnist-idx:{Path(args.data).resolve()}", seed=0, max_samples=plan["max_samples"])
    grid_size = len(plan["learning_rates"]) * len(plan["batch_sizes"]) * len(plan["epochs"])
    grid_epochs = len(plan["learning_rates"]) * len(plan["batch_sizes"]) * sum(plan["epochs"])
    max_resource = max(plan["epochs"])
    # Stop starting trials once this many epochs are spent; the last trial adds at most
    # max_resource, so the total stays within the budget.
    budget = int(plan["budget_fraction"] * grid_epochs)
    stop_at = max(budget - max_resource, 1)
    print(f"data {splits.summary()} | model {BASE} | {'QUICK' if args.quick else 'full'} mode")
    print(f"grid: {grid_size} configs, {grid_epochs} epochs; Optuna budget {budget} epochs "
          f"({plan['budget_fraction']:.0%}; no new trial after {stop_at}); Hyperband 1..{max_resource} epochs, factor 3")

    with tempfile.TemporaryDirectory(prefix="dlagent-hpo-") as tmp:
        print("\n[1/3] grid search", flush=True)
        grid = run_grid(splits, plan)
        print("\n[2/3] Optuna TPE + Hyperband", flush=True)
        hyperband = run_optuna(splits, plan, Path(tmp), "tpe_hyperband", "hyperband", n_trials=100, max_epochs=stop_at)
        print(f"\n[3/3] Optuna TPE without pruning, same {hyperband['trials']} trials", flush=True)
        noprune = run_optuna(splits, plan, Path(tmp), "tpe_nopruning", "none", n_trials=hyperband["trials"], max_epochs=None)

    print()
    print(f"{'method':<22}{'best val acc':>13}{'its test acc':>14}{'epochs':>8}{'trials':>8}{'wall s':>9}  best params")
    for name, r in (("grid 3x3x3", grid), ("Optuna TPE+Hyperband", hyperband), ("Optuna TPE, no pruning", noprune)):
        print(f"{name:<22}{r['best_val_accuracy']:>13.4f}{r['best_test_accuracy']:>14.4f}{r['epochs']:>8}{r['trials']:>8}{r['seconds']:>9.1f}  {r['best_params']}")
    epochs_ratio = hyperband["epochs"] / grid["epochs"]
    gap = (grid["best_test_accuracy"] - hyperband["best_test_accuracy"]) * 100
    saved = 1 - hyperband["epochs"] / noprune["epochs"]
    value_gap = (noprune["best_val_accuracy"] - hyperband["best_val_accuracy"]) * 100
    total_s = time.perf_counter() - total_started
    print(f"\nOptuna/grid epochs: {epochs_ratio:.3f} (goal <= 0.20); test accuracy gap grid - Optuna: {gap:+.2f} points (goal <= 0.2)")
    print(f"Optuna/grid wall time: {hyperband['seconds'] / grid['seconds']:.3f}")
    print(f"pruning saved {saved:.1%} of the epochs (goal >= 50%); best val accuracy no-pruning - pruning: {value_gap:+.2f} points (goal <= 0.1)")
    print(f"total wall time {total_s / 60:.1f} min")
    if args.quick:
        print("(quick mode: a smoke run on a small grid; the goals are for the full run)")
    print("RESULT " + json.dumps({
        "grid_best_test_acc": round(grid["best_test_accuracy"], 4),
        "optuna_best_test_acc": round(hyperband["best_test_accuracy"], 4),
        "grid_epochs": grid["epochs"], "optuna_epochs": hyperband["epochs"],
        "epochs_ratio": round(epochs_ratio, 4), "acc_gap_points": round(gap, 3),
        "pruning_epochs_saved": round(saved, 4), "nopruning_epochs": noprune["epochs"],
        "pruning_value_gap_points": round(value_gap, 3),
        "grid_best_val_acc": round(grid["best_val_accuracy"], 4), "optuna_best_val_acc": round(hyperband["best_val_accuracy"], 4),
        "nopruning_best_val_acc": round(noprune["best_val_accuracy"], 4), "nopruning_best_test_acc": round(noprune["best_test_accuracy"], 4),
        "optuna_trials": hyperband["trials"], "optuna_by_state": hyperband["by_state"],
        "grid_s": round(grid["seconds"], 1), "optuna_s": round(hyperband["seconds"], 1), "nopruning_s": round(noprune["seconds"], 1),
        "total_s": round(total_s, 1), "quick": args.quick,
        "goals": {"acc_within_0.2": gap <= 0.2, "epochs_le_20pct": epochs_ratio <= 0.2,
                  "pruning_saves_50pct": saved >= 0.5, "pruning_value_within_0.1": value_gap <= 0.1},
    }))


if __name__ == "__main__":
    main()
