"""Diagnostic: what a learning rate above the model's built-in search space does to a training from scratch.

    .venv/bin/python bench/rate_ceiling.py                         # digits, seeds 200-205, rates 0.005..0.04
    .venv/bin/python bench/rate_ceiling.py --seeds 200 201 --rates 0.01 0.02

Why: the ``learning`` policy's arms scale the rules' learning rate, ``lr_x2`` doubles it. In the
real learning-vs-rules runs of ``bench/agent_vs_static.py --parts learning`` (digits, seeds
200-209) one learning run trained a model with validation accuracy 0.53 where the champion had
0.99. The policy now caps a raised rate at the top of the model's built-in search space (the
``cnn``'s is 0.01; ``LearningPolicy(max_learning_rate=...)``). This measures why: the product's
``dlagent.ml.training.fit`` with the pipeline's default settings on the digits, from scratch, at
rates on both sides of 0.01, with the in-training controller the plan adds (its start rule
included: a from-scratch training keeps it). Per rate: the mean best validation accuracy over
the seeds with its 95 % interval, and the worst seed. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(200, 206)), help="data split and initialisation seeds")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04], help="learning rates")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of each training (the learning runs' 6 x 1.5)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    sys.path[:0] = [str(PROJECT_DIR / "plugins"), str(PROJECT_DIR / "dev")]
    from dlagent.agent.controller import ControllerSettings, controller_from_plan
    from dlagent.ml import training
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent_dev.stats import interval

    args = parse_args(argv)
    started, scores = time.perf_counter(), {rate: [] for rate in args.rates}
    for seed in args.seeds:
        splits = load_dataset("digits", seed=seed)
        config = TrainConfig(epochs=args.epochs, seed=seed).for_input(splits.input_shape)  # the digits' images: the cnn
        patience = max(1, config.early_stopping_patience // 2)  # the rules' plan
        for rate in args.rates:
            result = training.fit(splits, config.replace(learning_rate=rate),
                                  callbacks=controller_from_plan(ControllerSettings(patience=patience).to_dict()))
            scores[rate].append(100 * result.best_val_metric)
            print(f"[bench] seed {seed} learning_rate {rate:g} ({config.model}): best validation accuracy {scores[rate][-1]:.2f} %",
                  flush=True)
    result = {"seeds": args.seeds, "epochs": args.epochs, "by_rate": {}}
    for rate, values in scores.items():
        result["by_rate"][f"{rate:g}"] = {**interval(values), "worst": round(min(values), 2)}
        summary = result["by_rate"][f"{rate:g}"]
        print(f"[bench] learning_rate {rate:g}: {summary['mean']:.2f} % (95 % CI {summary['ci95'][0]:.2f}..{summary['ci95'][1]:.2f}), "
              f"worst seed {summary['worst']:.2f} %")
    result["seconds"] = round(time.perf_counter() - started, 1)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
