"""Benchmark: memory and speed of the pipeline's ``train`` as an image folder grows.

    .venv/bin/python bench/data_scale.py

**Data**: synthetic image folders of 32x32 RGB PNG files in 10 class folders (a coloured
square whose place and colour depend on the class, on noise), of 2,000, 8,000 and 32,000
images, written to a temporary folder by this script.

**Pipeline**: what the ``train`` task runs, in a fresh process per measurement: the data set
loaded with the default options (``cache: auto``: a folder whose decoded pixels fit 256 MiB is
held in memory, a larger one streamed through ``tf.data``; the 32,000 images are 375 MiB of
pixels, so they stream), then :func:`dlagent.ml.training.train` with the default ``cnn`` and
one epoch, logging to an MLflow store (params, the epoch's metrics, the test evaluation, the
model). Its wall time counts everything after the MLflow store exists: the scan that checks
and hashes every file, the split, the epoch with its validation pass, the test evaluation and
the logging.

**Baseline**, in the same run, on the same files: a hand-written ``tf.data`` pipeline (file
names shuffled, ``decode_png`` in parallel, batched and prefetched, as the TensorFlow guide
writes it) and ``model.fit`` of the same architecture for one epoch with the same batch size
and the same validation files, then ``evaluate`` on the same test files; its time includes
listing the files. Both arms import TensorFlow before their clocks start.

Each figure is measured ``--repeats`` times (seeds 0, 1, 2: the shuffle and the weights) in
fresh processes; peak resident memory is the process's own ``ru_maxrss``. The last line is
``RESULT {json}`` with ``rss_ratio_32k_vs_2k`` (the pipeline's mean peak memory at 32,000
images over that at 2,000) and ``throughput_vs_tfdata`` (the pipeline's images per second
over the hand-written pipeline's, at 32,000 images). Goals: at most 1.25 and at least 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SIZES = (2000, 8000, 32000)
CLASSES = 10
GOAL_RSS, GOAL_THROUGHPUT = 1.25, 0.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process measurements per size and pipeline (seeds 0..)")
    parser.add_argument("--child", choices=["pipeline", "tfdata"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_folder(root: Path, n: int) -> Path:
    """``n`` PNG files, 32x32 RGB, ``n / 10`` per class folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(n)
    colours = rng.integers(60, 255, (CLASSES, 3))
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):
        c = i % CLASSES
        pixels = rng.integers(0, 90, (32, 32, 3)).astype(np.uint8)
        top, left = 4 + 2 * (c // 5) + rng.integers(-2, 3), 3 + 5 * (c % 5) + rng.integers(-1, 2)
        pixels[top:top + 8, left:left + 6] = colours[c]
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i:06d}.png")
    return root


def child_pipeline(folder: str, workdir: str, seed: int) -> dict:
    import keras  # noqa: F401 - TensorFlow's import (5-9 s) is not timed, as in the baseline
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.training import train
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")  # the tracking store exists before a task starts
    experiment = client.create_experiment("scale", artifact_location=f"{workdir}/artifacts")
    run_id = client.create_run(experiment).info.run_id
    started = time.perf_counter()
    splits = load_dataset_with_options(f"images:{folder}", {}, seed=seed, allowed_roots=[folder])
    loaded = time.perf_counter() - started
    result, _ = train(splits, TrainConfig(model="cnn", epochs=1, seed=seed), client=client, run_id=run_id)
    client.set_terminated(run_id)
    return {"seconds": time.perf_counter() - started, "load_seconds": loaded, "fit_seconds": result.seconds,
            "n_train": len(splits.y_train), "streamed": type(splits.x_train).__name__ == "ImageFiles",
            "val_accuracy": result.history["val_accuracy"][-1]}


def child_tfdata(folder: str, seed: int) -> dict:
    """The hand-written pipeline, on the files of the pipeline's split."""
    import keras
    import numpy as np
    import tensorflow as tf
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import split_dataset
    from dlagent.ml.models import build_model

    started = time.perf_counter()
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    paths = [str(f) for c in classes for f in sorted((Path(folder) / c).glob("*.png"))]
    labels = np.array([classes.index(Path(p).parent.name) for p in paths], np.int64)
    parts = split_dataset(np.arange(len(paths))[:, None], labels, seed=seed, val_fraction=0.15, test_fraction=0.15)
    train_i, y_train, val_i, y_val, test_i, y_test = parts

    def load(path, label):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        return tf.cast(image, tf.float32) / 255.0, label

    def pipeline(indices, y, shuffle):
        data = tf.data.Dataset.from_tensor_slices(([paths[i] for i in indices[:, 0]], y))
        if shuffle:
            data = data.shuffle(len(y), seed=seed)
        return data.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size).prefetch(tf.data.AUTOTUNE)

    config = TrainConfig(model="cnn", epochs=1, seed=seed)
    keras.utils.set_random_seed(seed)
    model = build_model(config, (32, 32, 3), len(classes))
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit_started = time.perf_counter()
    history = model.fit(pipeline(train_i, y_train, True), validation_data=pipeline(val_i, y_val, False), epochs=1, verbose=0)
    fit_seconds = time.perf_counter() - fit_started
    model.evaluate(pipeline(test_i, y_test, False), verbose=0)
    return {"seconds": time.perf_counter() - started, "fit_seconds": fit_seconds, "n_train": len(y_train), "streamed": True,
            "val_accuracy": float(history.history["val_accuracy"][-1])}


def measure(kind: str, folder: Path, seed: int, workdir: Path) -> dict:
    from dlagent_dev.benchrun import child_figures

    workdir.mkdir(parents=True, exist_ok=True)
    figures = child_figures(__file__, kind, {"folder": folder, "workdir": workdir, "seed": seed})
    figures["images_per_s"] = figures["n_train"] / figures["seconds"]
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        figures = child_pipeline(args.folder, args.workdir, args.seed) if args.child == "pipeline" else child_tfdata(args.folder, args.seed)
        figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures))
        return 0
    from dlagent_dev.benchrun import paired_arms

    started = time.perf_counter()
    rows, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="dlagent-bench-scale-") as tmp:
        for n in args.sizes:
            made = time.perf_counter()
            folder = write_folder(Path(tmp) / f"images-{n}", n)
            print(f"[bench] wrote {n} images in {time.perf_counter() - made:.0f} s", flush=True)
            for seed in range(args.repeats):
                for kind in ("pipeline", "tfdata"):
                    figures = measure(kind, folder, seed, Path(tmp) / f"work-{n}-{kind}-{seed}")
                    rows.append({"images": n, "kind": kind, "seed": seed, **figures})
                    print(f"[bench] {n} images, {kind}, seed {seed}: {figures['images_per_s']:.0f} images/s over {figures['seconds']:.1f} s "
                          f"(fit {figures['fit_seconds']:.1f} s), peak RSS {figures['peak_rss_mib']:.0f} MiB, "
                          f"{'streamed' if figures['streamed'] else 'in memory'}, val accuracy {figures['val_accuracy']:.3f}", flush=True)
            mine = [r for r in rows if r["images"] == n and r["kind"] == "pipeline"]
            theirs = [r for r in rows if r["images"] == n and r["kind"] == "tfdata"]
            summary[n] = {**paired_arms(mine, theirs, ("pipeline", "tfdata"), "images_per_s"), "streamed": mine[0]["streamed"]}
            print(f"[bench] {n} images: pipeline {summary[n]['pipeline_images_per_s']['mean']:.0f} images/s, peak "
                  f"{summary[n]['pipeline_rss_mib']['mean']:.0f} MiB; tf.data {summary[n]['tfdata_images_per_s']['mean']:.0f} images/s, "
                  f"peak {summary[n]['tfdata_rss_mib']['mean']:.0f} MiB; ratio {summary[n]['throughput_ratio']['mean']:.3f} "
                  f"(95% CI {summary[n]['throughput_ratio']['ci95']})", flush=True)
    small, large = min(summary), max(summary)
    rss_ratio = summary[large]["pipeline_rss_mib"]["mean"] / summary[small]["pipeline_rss_mib"]["mean"]
    throughput = summary[large]["throughput_ratio"]["mean"]
    result = {"rss_ratio_32k_vs_2k": round(rss_ratio, 3), "throughput_vs_tfdata": round(throughput, 3),
              "goal_rss": GOAL_RSS, "goal_throughput": GOAL_THROUGHPUT,
              "goal_met": bool(rss_ratio <= GOAL_RSS and throughput >= GOAL_THROUGHPUT), "sizes": [small, large],
              "per_size": {str(k): v for k, v in summary.items()}, "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
