"""Benchmark: fine-tuning the pipeline's MNIST model on another digit source with 10 labels per class.

    .venv/bin/python bench/transfer.py --data ../shared/data/mnist-t10k

**Source**: the model a default pipeline run trains (model ``cnn`` with the default settings)
fitted on a stratified 85% of the MNIST test set in ``--data`` (28x28), saved as a ``.keras``
file in a temporary data root.

**Target**: scikit-learn's bundled digits (8x8, another scanner, another writer population),
with only **10 labelled images per class** (7 to train, 3 to validate: early stopping reads
them); every other image of the set is the test set. Per seed, the same labelled images for
both arms:

- **transfer**: ``init_from`` the source file, the default ``freeze`` and learning rates, the
  two phases of :mod:`dlagent.ml.transfer`. ``--framing mnist`` (default) first puts each 8x8
  digit in MNIST's layout, the way MNIST itself was made (scaled to a 20x20 box, centred in
  28x28), as a person preparing data for a model trained on MNIST would; ``--framing stretch``
  gives the 8x8 images as they are, and the adapter stretches them over the whole 28x28 frame;
- **scratch**: training from scratch at the same ``--epochs``, with every choice a person could
  make: model ``cnn`` or ``mlp``, on the 8x8 images or the framed 28x28 ones; the one with the
  best validation accuracy counts, as a person would choose.

Both use the pipeline's defaults otherwise (early stopping, patience 5). The test accuracy of
each epoch is recorded too (a callback; it never steers training), for the epochs each arm
needs to reach the scratch model's best. Figures: mean and standard deviation over the seeds,
and a 95% t-interval of the per-seed gain.

The last line is ``RESULT {json}``. Goal: ``gain_points`` >= 5 (transfer at least 5 points
more accurate) or ``epochs_to_scratch_best_ratio`` <= 0.5 (transfer reaches the scratch model's
best test accuracy in at most half the epochs the scratch model needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = "../shared/data/mnist-t10k"
LABELS_PER_CLASS = 10
VAL_PER_CLASS = 3
FRAMINGS = ("mnist", "stretch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"folder with MNIST IDX files (default {DEFAULT_DATA})")
    parser.add_argument("--source-epochs", type=int, default=20, help="epochs of the source model on MNIST (the pipeline's default)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of both arms on the target")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13], help="target seeds (labelled images, weights)")
    parser.add_argument("--framing", choices=FRAMINGS, default="mnist",
                        help="how the transfer arm's 8x8 digits meet the source's 28x28 input (see few_labels; default mnist)")
    return parser.parse_args(argv)


def few_labels(seed: int, framing: str = "stretch"):
    """Digits split: 7 train + 3 validation images per class (seeded), the rest as the test set.

    ``framing`` ``stretch``: the 8x8 images as they are (the transfer adapter stretches them over
    the source's 28x28 frame); ``mnist``: each image put in MNIST's framing first, the way MNIST
    itself was made (the digit scaled to a 20x20 box and centred in 28x28), as a person would
    prepare data for a model trained on MNIST. The same images are chosen either way."""
    import numpy as np
    from dlagent.ml.data import DatasetSplits
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    if framing == "mnist":
        x = mnist_framing(x)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(10):
        chosen = rng.permutation(np.where(y == label)[0])[:LABELS_PER_CLASS]
        train.extend(chosen[VAL_PER_CLASS:])
        val.extend(chosen[:VAL_PER_CLASS])
    test = np.setdiff1d(np.arange(len(y)), np.concatenate([train, val]))
    return DatasetSplits(f"digits-{LABELS_PER_CLASS}-per-class-{framing}", x[train], y[train], x[val], y[val], x[test], y[test],
                         num_classes=10, class_names=[str(i) for i in range(10)])


def mnist_framing(images):
    """8x8 images in [0, 1] -> 28x28: bilinear to 20x20, centred with a 4-pixel border (MNIST's layout)."""
    import numpy as np
    from PIL import Image

    framed = np.zeros((len(images), 28, 28), np.float32)
    for i, image in enumerate(images):
        framed[i, 4:24, 4:24] = np.asarray(Image.fromarray(image, mode="F").resize((20, 20), Image.BILINEAR))
    return np.clip(framed, 0.0, 1.0)


def test_curve_callback(splits):
    import keras
    import numpy as np

    class TestAccuracyPerEpoch(keras.callbacks.Callback):
        """Reads the test accuracy after every epoch (for the report only)."""

        def __init__(self):
            super().__init__()
            self.curve = {}

        def on_epoch_end(self, epoch, logs=None):
            predicted = np.asarray(self.model.predict(splits.x_test, verbose=0, batch_size=512)).argmax(axis=1)
            self.curve[int(epoch)] = float((predicted == splits.y_test).mean())

    return TestAccuracyPerEpoch()


def run_arm(splits, config, source_model=None) -> dict:
    from dlagent.ml.training import evaluate, fit

    curve = test_curve_callback(splits)
    result = fit(splits, config, callbacks=[curve], source_model=source_model)
    return {"test_accuracy": evaluate(result.model, splits)["test_accuracy"], "val_accuracy": result.best_val_accuracy,
            "curve": [curve.curve[e] for e in sorted(curve.curve)], "epochs_run": result.epochs_run, "transfer": result.transfer}


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    return next((epoch + 1 for epoch, value in enumerate(curve) if value >= target - 1e-9), None)


def main(argv=None) -> int:
    from dlagent_dev.stats import interval

    args = parse_args(argv)
    data = Path(args.data)
    if not data.is_dir() or not list(data.glob("*images-idx3-ubyte*")):
        print(f"[bench] MNIST IDX data not found in {str(data)!r}; pass --data <folder> (here: {DEFAULT_DATA}).", file=sys.stderr)
        return 2
    if len(args.seeds) < 3:
        print("[bench] give at least 3 seeds", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent.ml.training import evaluate, fit
    from dlagent.ml.transfer import load_source_model

    started = time.perf_counter()
    mnist = load_dataset(f"mnist-idx:{data}", seed=0)
    source = fit(mnist, TrainConfig(model="cnn", epochs=args.source_epochs, seed=0))
    print(f"[bench] source: cnn on {mnist.summary()['n_train']} MNIST images, {source.epochs_run} epochs, "
          f"test accuracy {evaluate(source.model, mnist)['test_accuracy']:.4f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-transfer-") as root:
        path = Path(root) / "mnist-cnn.keras"
        source.model.save(path)
        source_model = load_source_model(None, str(path), allowed_roots=[root])  # the user's path: a .keras file in a data root
        for seed in args.seeds:
            views = {framing: few_labels(seed, framing) for framing in FRAMINGS}  # the same images, two layouts
            transfer = run_arm(views[args.framing], TrainConfig(init_from=str(path), epochs=args.epochs, seed=seed), source_model)
            scratch_arms = {f"{model}/{framing}": run_arm(view, TrainConfig(model=model, epochs=args.epochs, seed=seed))
                            for model in ("cnn", "mlp") for framing, view in views.items()}
            chosen = max(scratch_arms, key=lambda m: scratch_arms[m]["val_accuracy"])  # what a person would pick: validation only
            zero_shot = (float((source.model.predict(views["mnist"].x_test, verbose=0, batch_size=512).argmax(axis=1)
                                == views["mnist"].y_test).mean()))  # the source as it is, on the framed test images
            scratch = scratch_arms[chosen]
            scratch_best = max(scratch["curve"])
            scratch_epochs = epochs_to_reach(scratch["curve"], scratch_best)
            transfer_epochs = epochs_to_reach(transfer["curve"], scratch_best)
            row = {"seed": seed, "scratch_model": chosen, "scratch_metric": scratch["test_accuracy"],
                   "transfer_metric": transfer["test_accuracy"], "source_zero_shot": zero_shot, "gain_points": 100 * (transfer["test_accuracy"] - scratch["test_accuracy"]),
                   "scratch_epochs_to_best": scratch_epochs, "transfer_epochs_to_scratch_best": transfer_epochs,
                   "scratch_all": {m: round(a["test_accuracy"], 4) for m, a in scratch_arms.items()}, "transfer_phases": transfer["transfer"]}
            rows.append(row)
            print(f"[bench] seed {seed}: transfer {row['transfer_metric']:.4f}, scratch ({chosen}) {row['scratch_metric']:.4f} "
                  f"({', '.join(f'{m} {a:.4f}' for m, a in row['scratch_all'].items())}); gain {row['gain_points']:+.1f} points; "
                  f"scratch best {scratch_best:.4f} after {scratch_epochs} epochs, transfer reaches it after {transfer_epochs}", flush=True)
    ratios = [(r["transfer_epochs_to_scratch_best"] or float("inf")) / r["scratch_epochs_to_best"] for r in rows]
    gain = interval([r["gain_points"] for r in rows])
    result = {
        "scratch_metric": interval([r["scratch_metric"] for r in rows]),
        "transfer_metric": interval([r["transfer_metric"] for r in rows]),
        "gain_points": gain,
        "epochs_to_scratch_best_ratio": {"per_seed": [round(r, 3) for r in ratios], "worst": round(max(ratios), 3)},
        "goal_met": bool(gain["mean"] >= 5 or max(ratios) <= 0.5),
        "labels_per_class": LABELS_PER_CLASS, "framing": args.framing, "epochs": args.epochs, "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1), "rows": rows,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
