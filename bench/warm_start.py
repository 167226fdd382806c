"""Diagnostic: does the agent's warm-started final training cost accuracy against training from scratch?

    .venv/bin/python bench/warm_start.py                 # MNIST subsets of 1,000 images, seeds 10-19
    .venv/bin/python bench/warm_start.py --seeds 10 11 12

Why: ``bench/agent_vs_static.py`` found the default pipeline with the agent about 0.44 points
below its ablation (the same short trials without the agent's final-training plan), and
``docs/agent.md`` named the warm start as the suspect. This runs the two final trainings the
pipeline chooses between, with the product's own code (:func:`dlagent.ml.training.fit`), on the
same data, seed and setting:

- **scratch** (what ``agent_policy: off`` trains): the setting for ``epochs`` (20) from scratch,
  early stopping on;
- **warm** (what the ``rules`` plan trains when the best trial was still improving): a trial of
  ``trial_epochs_fraction`` x 20 = 8 epochs (the agent's short trial), continued from its
  weights for the 12 epochs a from-scratch training would have left, with a fresh optimizer, as
  ``TrainOperator(warm_start=...)`` does (the checkpoint is loaded without its optimizer);
- **warm + controller** (what the plan adds): the same continuation with the plan's in-training
  controller (:class:`~dlagent.agent.controller.ControllerSettings` with the rules' plateau
  patience, half of ``early_stopping_patience``: the learning rate halves on a plateau, gradients
  are clipped);
- **kept optimizer** (not in the product; the alternative one would try): the same continuation
  keeping the trial's Adam state;
- **trial** alone, for reference.

The score is accuracy on every MNIST test image outside the 1,000-image subset (about 9,000), so
a difference of 0.4 points is not lost in a 150-image test split. Seeds 10-19 were used for no
default (the agent's were chosen on MNIST seeds 0-2; ``agent_vs_static.py`` judges on 100-109).
Per arm: the mean difference from scratch over the seeds with its 95 % t-interval, and the epochs
paid. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_DIR / "plugins"), str(PROJECT_DIR / "dev")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MNIST = PROJECT_DIR.parent / "shared" / "data" / "mnist-t10k"
EPOCHS, TRIAL_FRACTION = 20, 0.4  # TrainConfig's default epochs; RulesPolicy's trial_epochs_fraction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10, 20)), help="at least 3")
    parser.add_argument("--samples", type=int, default=1000, help="stratified MNIST subset per seed")
    args = parser.parse_args(argv)
    if len(args.seeds) < 3:
        parser.error("give at least 3 seeds: the figures are intervals over seeds")
    return args


def one_seed(seed: int, samples: int) -> dict:
    from dlagent.agent.controller import ControllerSettings, controller_from_plan
    from dlagent.ml import training
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent.ml.models import copy_model
    from dlagent_dev.benchrun import mnist_outside_images

    splits = load_dataset(f"mnist-idx:{MNIST}", seed=seed, max_samples=samples)
    x, y = mnist_outside_images(splits, MNIST)

    def accuracy(model) -> float:
        return 100.0 * float((model.predict(x, batch_size=512, verbose=0).argmax(1) == y).mean())

    config = TrainConfig(model="cnn", epochs=EPOCHS, seed=seed)
    trial_epochs = math.ceil(EPOCHS * TRIAL_FRACTION)
    scratch = training.fit(splits, config)
    trial = training.fit(splits, config.replace(epochs=trial_epochs))
    trial_accuracy = accuracy(trial.model)  # before the kept-optimizer arm continues this very model
    warm = training.fit(splits, config.replace(epochs=EPOCHS - trial_epochs), initial_model=copy_model(trial.model))
    patience = max(1, config.early_stopping_patience // 2)
    controlled = training.fit(splits, config.replace(epochs=EPOCHS - trial_epochs), initial_model=copy_model(trial.model),
                              callbacks=controller_from_plan(ControllerSettings(patience=patience, start_loss_factor=1.1).to_dict()))
    no_start_rule = training.fit(splits, config.replace(epochs=EPOCHS - trial_epochs), initial_model=copy_model(trial.model),
                                 callbacks=controller_from_plan(ControllerSettings(patience=patience, start_loss_factor=None).to_dict()))
    compile_fresh = training.compile_for_training

    def keep_optimizer(model, cfg, learning_rate, task="classification"):
        if getattr(model, "optimizer", None) is None or int(model.optimizer.iterations.numpy()) == 0:
            compile_fresh(model, cfg, learning_rate, task)

    training.compile_for_training = keep_optimizer
    try:
        kept = training.fit(splits, config.replace(epochs=EPOCHS - trial_epochs), initial_model=trial.model)
    finally:
        training.compile_for_training = compile_fresh
    return {"seed": seed, "outside_images": len(y),
            "scratch": accuracy(scratch.model), "warm": accuracy(warm.model), "warm_controller": accuracy(controlled.model),
            "warm_controller_no_start_rule": accuracy(no_start_rule.model),
            "kept_optimizer": accuracy(kept.model),
            "trial": trial_accuracy,
            "epochs": {"scratch": scratch.epochs_run, "warm": trial.epochs_run + warm.epochs_run,
                       "warm_controller": trial.epochs_run + controlled.epochs_run,
                       "warm_controller_no_start_rule": trial.epochs_run + no_start_rule.epochs_run,
                       "kept_optimizer": trial.epochs_run + kept.epochs_run}}


def main(argv=None) -> int:
    from dlagent_dev.stats import interval

    args = parse_args(argv)
    started, rows = time.perf_counter(), []
    for seed in args.seeds:
        row = one_seed(seed, args.samples)
        rows.append(row)
        print(f"[bench] seed {seed}: scratch {row['scratch']:.2f} %, trial {row['trial']:.2f} %, warm {row['warm']:.2f} %, warm + controller {row['warm_controller']:.2f} % (without its start rule {row['warm_controller_no_start_rule']:.2f} %), kept optimizer "
              f"{row['kept_optimizer']:.2f} % on {row['outside_images']} images; epochs {row['epochs']}", flush=True)
    result = {"seeds": args.seeds, "samples": args.samples, "scratch_accuracy": interval([r["scratch"] for r in rows])}
    result["trial_minus_scratch_points"] = interval([r["trial"] - r["scratch"] for r in rows])
    for arm in ("warm", "warm_controller", "warm_controller_no_start_rule", "kept_optimizer"):
        diff = interval([r[arm] - r["scratch"] for r in rows])
        epochs = sum(r["epochs"][arm] for r in rows) / sum(r["epochs"]["scratch"] for r in rows)
        result[f"{arm}_minus_scratch_points"] = diff
        result[f"{arm}_epochs_ratio"] = round(epochs, 3)
        print(f"[bench] {arm} minus scratch: {diff['mean']:+.2f} points (95 % CI {diff['ci95'][0]:+.2f}..{diff['ci95'][1]:+.2f}), "
              f"{epochs:.2f}x the epochs (the trial's included)")
    result["seconds"] = round(time.perf_counter() - started, 1)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
