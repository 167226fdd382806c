"""Benchmark: how much smaller and faster compression makes the MNIST CNN, and what it costs.

    .venv/bin/python bench/compress.py --data ../shared/data/mnist-t10k

Trains the float CNN (model ``cnn``) on a stratified split of the MNIST test set (seed 0),
then measures in one run, on the same held-out test split, the float Keras model against each
candidate: float32 TFLite, dynamic-range, float16, full-integer int8, 80%-pruned + int8 and a
distilled student + int8. For each: size and gzip size (ratios to the float Keras model file,
saved without optimizer state), test accuracy (delta in points), single-sample latency p50/p95
(TFLite interpreter on one thread versus the Keras model call ``model(x)`` and
``model.predict(x)`` on one sample) and batch throughput.

The last line is ``RESULT {...}`` (JSON). Goals: int8 <= 0.27x the float size; 80% sparse
+ int8 <= 0.12x the float size after gzip; accuracy drop <= 0.5 points; TFLite int8
single-sample latency >= 3x faster than the Keras model call and >= 20x faster than
``model.predict`` on one sample.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = "../shared/data/mnist-t10k"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"folder with MNIST IDX files (default {DEFAULT_DATA})")
    parser.add_argument("--epochs", type=int, default=12, help="float CNN training epochs (early stopping, patience 3)")
    parser.add_argument("--fine-tune-epochs", type=int, default=2, help="fine-tune epochs after pruning")
    parser.add_argument("--distill-epochs", type=int, default=15, help="student training epochs")
    parser.add_argument("--latency-runs", type=int, default=300, help="single-sample calls timed per model")
    parser.add_argument("--out", type=Path, default=None, help="also write the full results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    if not data.is_dir() or not (list(data.glob("*images-idx3-ubyte*")) and list(data.glob("*labels-idx1-ubyte*"))):
        print(f"[bench] MNIST IDX data not found in {str(data)!r} (need *images-idx3-ubyte[.gz] and *labels-idx1-ubyte[.gz]).\n"
              f"        Pass --data <folder>; in this workspace it is {DEFAULT_DATA} (relative to the project root).", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from dlagent.ml.compression import CompressionConfig, compress
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent.ml.evaluation import evaluate_keras
    from dlagent.ml.training import fit

    started = time.perf_counter()
    splits = load_dataset(f"mnist-idx:{data}", seed=0)
    print(f"[bench] data {splits.summary()}")
    trained = fit(splits, TrainConfig(model="cnn", epochs=args.epochs, early_stopping_patience=3))
    model = trained.model
    print(f"[bench] float CNN: {model.count_params():,} params, {trained.epochs_run} epochs in {trained.seconds:.0f}s "
          f"(best epoch {trained.best_epoch + 1})")
    reference = evaluate_keras(model, splits, explain=False, latency_runs=args.latency_runs, predict_runs=50).metrics

    configs = {
        "float32": CompressionConfig(quantization="none"),
        "dynamic": CompressionConfig(quantization="dynamic"),
        "float16": CompressionConfig(quantization="float16"),
        "int8": CompressionConfig(quantization="int8"),
        "pruned80+int8": CompressionConfig(quantization="int8", sparsity=0.8, fine_tune_epochs=args.fine_tune_epochs),
        "student+int8": CompressionConfig(quantization="int8", distill=True, student_model="cnn", student_filters=8,
                                          student_units=32, distill_epochs=args.distill_epochs),
    }
    candidates = {}
    for label, config in configs.items():
        candidate = compress(model, splits, config, latency_runs=args.latency_runs)
        candidates[label] = candidate.metrics
        print(f"[bench] {label:<14} done in {candidate.metrics['compress_seconds']:.1f}s")

    ref_size, ref_gzip, ref_acc = reference["size_bytes"], reference["gzip_size_bytes"], reference["test_accuracy"]
    header = (f"{'model':<14} {'params':>8} {'bytes':>10} {'size x':>7} {'gzip x':>7} {'acc %':>7} {'d pts':>6} "
              f"{'p50 ms':>8} {'p95 ms':>8} {'vs call':>8} {'vs pred':>8} {'samples/s':>10}")
    print("\n" + header + "\n" + "-" * len(header))
    print(f"{'keras float':<14} {reference['num_params']:>8,} {ref_size:>10,} {1:>7.3f} {ref_gzip / ref_size:>7.3f} "
          f"{ref_acc * 100:>7.2f} {0:>6.2f} {reference['latency_ms_p50']:>8.3f} {reference['latency_ms_p95']:>8.3f} "
          f"{1:>8.1f} {reference['predict_latency_ms_p50'] / reference['latency_ms_p50']:>8.1f} {reference['throughput_samples_per_s']:>10,.0f}")
    rows = {}
    for label, m in candidates.items():
        row = {
            "size_bytes": m["size_bytes"],
            "size_ratio": m["size_bytes"] / ref_size,
            "gzip_size_bytes": m["gzip_size_bytes"],
            "gzip_ratio": m["gzip_size_bytes"] / ref_gzip,
            "gzip_vs_float_bytes_ratio": m["gzip_size_bytes"] / ref_size,
            "test_accuracy": m["test_accuracy"],
            "acc_delta_points": (m["test_accuracy"] - ref_acc) * 100,
            "latency_ms_p50": m["latency_ms_p50"],
            "latency_ms_p95": m["latency_ms_p95"],
            "speedup_vs_keras_call": reference["latency_ms_p50"] / m["latency_ms_p50"],
            "speedup_vs_keras_predict": reference["predict_latency_ms_p50"] / m["latency_ms_p50"],
            "throughput_samples_per_s": m["throughput_samples_per_s"],
            "sparsity": m["sparsity"],
            "num_params": m["num_params"],
        }
        rows[label] = row
        print(f"{label:<14} {m['num_params']:>8,} {m['size_bytes']:>10,} {row['size_ratio']:>7.3f} {row['gzip_ratio']:>7.3f} "
              f"{m['test_accuracy'] * 100:>7.2f} {row['acc_delta_points']:>+6.2f} {m['latency_ms_p50']:>8.3f} {m['latency_ms_p95']:>8.3f} "
              f"{row['speedup_vs_keras_call']:>8.1f} {row['speedup_vs_keras_predict']:>8.1f} {m['throughput_samples_per_s']:>10,.0f}")
    print(f"\nsize x / gzip x: ratio to the float Keras model file ({ref_size:,} bytes; gzip {ref_gzip:,} bytes). "
          "vs call / vs pred: single-sample p50 speed-up over model(x) / model.predict(x). "
          "TFLite runs on 1 thread; Keras on TensorFlow's default threads.")

    int8, pruned, student, float_tflite = rows["int8"], rows["pruned80+int8"], rows["student+int8"], rows["float32"]
    drops = {label: -row["acc_delta_points"] for label, row in rows.items()}
    result = {
        "int8_size_ratio": round(int8["size_ratio"], 4),
        "pruned_int8_gzip_ratio": round(pruned["gzip_ratio"], 4),
        "max_acc_drop_points": round(max(drops.values()), 3),
        "int8_latency_speedup": round(int8["speedup_vs_keras_call"], 2),
        "int8_vs_predict_speedup": round(int8["speedup_vs_keras_predict"], 1),
        "int8_vs_float_tflite_latency_ratio": round(int8["latency_ms_p50"] / float_tflite["latency_ms_p50"], 3),
        "int8_acc_drop_points": round(drops["int8"], 3),
        "pruned_int8_acc_drop_points": round(drops["pruned80+int8"], 3),
        "student_int8_acc_drop_points": round(drops["student+int8"], 3),
        "max_acc_drop_points_excluding_student": round(max(v for k, v in drops.items() if k != "student+int8"), 3),
        "pruned_int8_gzip_vs_float_bytes_ratio": round(pruned["gzip_vs_float_bytes_ratio"], 4),
        "student_int8_size_ratio": round(student["size_ratio"], 4),
        "float_test_accuracy": round(ref_acc, 4),
        "keras_call_latency_ms_p50": round(reference["latency_ms_p50"], 3),
        "keras_predict_latency_ms_p50": round(reference["predict_latency_ms_p50"], 3),
        "int8_latency_ms_p50": round(int8["latency_ms_p50"], 4),
        "float_keras_size_bytes": ref_size,
        "n_test": int(len(splits.y_test)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    goals = {
        "int8 <= 0.27x float size": result["int8_size_ratio"] <= 0.27,
        "80% sparse + int8 <= 0.12x float size after gzip": result["pruned_int8_gzip_ratio"] <= 0.12,
        "accuracy drop <= 0.5 points (all candidates)": result["max_acc_drop_points"] <= 0.5,
        "int8 >= 3x faster than the Keras model call": result["int8_latency_speedup"] >= 3,
        "int8 >= 20x faster than model.predict": result["int8_vs_predict_speedup"] >= 20,
    }
    print()
    for goal, met in goals.items():
        print(f"[bench] {'met ' if met else 'MISS'} {goal}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"reference": reference, "candidates": rows, "result": result, "goals": goals}, indent=2))
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
