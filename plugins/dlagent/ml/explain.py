"""Explanations that come with an evaluation: integrated gradients for images, permutation
importance for tables, each with its plot (matplotlib's object API, no pyplot)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dlagent.ml.data import DatasetSplits
from dlagent.ml.models import keras_predict
from dlagent.ml.plotting import new_figure


def integrated_gradients(model, images: np.ndarray, targets: np.ndarray, *, steps: int = 32, baseline=None) -> np.ndarray:
    """Integrated-gradients attributions of ``model``'s probability for ``targets`` (one per image).

    The path runs from a black ``baseline`` (zeros) to the image in ``steps`` straight-line
    steps (trapezoidal rule). Returns an array shaped like ``images``.
    """
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    baseline = np.zeros_like(images[0]) if baseline is None else np.asarray(baseline, np.float32)
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32).reshape(1, -1, *([1] * images[0].ndim))
    attributions = []
    chunk = max(1, 512 // (steps + 1))  # images per gradient pass
    for start in range(0, len(images), chunk):
        batch, batch_targets = images[start : start + chunk], targets[start : start + chunk]
        k = len(batch)
        path = tf.constant((baseline + alphas * (batch[:, None] - baseline)).reshape(k * (steps + 1), *images.shape[1:]))
        picks = tf.constant(np.repeat(batch_targets, steps + 1))
        with tf.GradientTape() as tape:
            tape.watch(path)
            probs = model(path, training=False)
            scores = tf.gather(probs, picks, axis=1, batch_dims=1)
        grads = tape.gradient(scores, path).numpy().reshape(k, steps + 1, *images.shape[1:])
        average = ((grads[:, :-1] + grads[:, 1:]) / 2.0).mean(axis=1)
        attributions.append((batch - baseline) * average)
    return np.concatenate(attributions)


def plot_integrated_gradients(model, splits: DatasetSplits, path, *, samples_per_class: int = 2, steps: int = 32) -> Path:
    """For ``samples_per_class`` test images of each class: the image and its attribution map."""
    picks = []
    for label in range(splits.num_classes):
        picks.extend(np.flatnonzero(splits.y_test == label)[:samples_per_class].tolist())
    images = splits.x_test[picks]
    probs = keras_predict(model, images)
    predicted = np.argmax(probs, axis=1)
    attributions = integrated_gradients(model, images, predicted, steps=steps)
    n = len(picks)
    columns = min(n, 2 * samples_per_class) if samples_per_class else 2
    columns = max(columns, 2)
    per_row = columns // 2
    rows = math.ceil(n / per_row)
    figure = new_figure(2.0 * columns, 2.1 * rows)
    for k, index in enumerate(picks):
        image = images[k]
        heat = np.abs(attributions[k])
        if heat.ndim == 3:
            heat = heat.sum(axis=-1)
        shown = image if image.ndim == 2 or image.shape[-1] in (3, 4) else image[..., 0]
        row, slot = divmod(k, per_row)
        left = figure.add_subplot(rows, columns, row * columns + 2 * slot + 1)
        left.imshow(np.clip(shown, 0, 1), cmap="gray" if shown.ndim == 2 else None)
        left.set_title(f"true {splits.class_names[splits.y_test[index]]} / pred {splits.class_names[predicted[k]]}", fontsize=7)
        right = figure.add_subplot(rows, columns, row * columns + 2 * slot + 2)
        right.imshow(heat, cmap="inferno")
        right.set_title("integrated gradients", fontsize=7)
        for axes in (left, right):
            axes.axis("off")
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.95, wspace=0.1, hspace=0.35)  # tight_layout is slow on big grids
    figure.savefig(path)
    return Path(path)


def permutation_importance(predict_fn, x: np.ndarray, y: np.ndarray, *, repeats: int = 5, seed: int = 0,
                           max_rows: int = 20_000, metric=None, groups=None) -> list[dict]:
    """How much worse the primary ``metric`` gets (:meth:`~dlagent.ml.metrics.Metric.gain_points`
    lost, mean and std over ``repeats``) when one feature column is shuffled; accuracy by default.

    ``groups`` (``[(name, [column, ...]), ...]``, e.g. a table's
    :meth:`~dlagent.ml.tabular.TableEncoding.column_groups`) shuffles the columns of one raw
    feature together (a categorical value's whole one-hot block), so no impossible row is made;
    by default every column is its own feature, named by its index.

    Every shuffled copy is predicted in one batched call per feature, so this costs
    ``n_features`` prediction passes whatever ``repeats`` is.
    """
    from dlagent.ml.metrics import get_metric

    metric = metric or get_metric("accuracy")
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    base = metric.score(y, predict_fn(x))
    rows = []
    per_pass = max(1, min(repeats, max_rows // max(len(x), 1)))
    for j, columns in groups or [(j, [j]) for j in range(flat.shape[1])]:
        drops = []
        remaining = repeats
        while remaining > 0:
            k = min(per_pass, remaining)
            stacked = np.repeat(flat[None], k, axis=0)
            for r in range(k):
                stacked[r][:, columns] = flat[rng.permutation(len(x))][:, columns]
            outputs = predict_fn(stacked.reshape(k * len(x), *x.shape[1:]))
            outputs = outputs.reshape(k, len(x), *outputs.shape[1:])
            drops.extend(-metric.gain_points(metric.score(y, outputs[r]), base) for r in range(k))
            remaining -= k
        rows.append({"feature": j, "importance_mean": float(np.mean(drops)), "importance_std": float(np.std(drops)),
                     "unit": f"{metric.name} points"})
    return sorted(rows, key=lambda r: -r["importance_mean"])


def plot_permutation_importance(importance: list[dict], path, *, top: int = 20, feature_names=None) -> Path:
    shown = importance[:top][::-1]
    names = [r["feature"] if isinstance(r["feature"], str) else str(feature_names[r["feature"]]) if feature_names
             else f"feature {r['feature']}" for r in shown]
    figure = new_figure(6.0, max(2.5, 0.3 * len(shown) + 1))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(names, [r["importance_mean"] for r in shown], xerr=[r["importance_std"] for r in shown], color="tab:blue")
    unit = shown[-1].get("unit", "accuracy points") if shown else "accuracy points"
    axes.set_xlabel(f"{unit} lost when shuffled")
    axes.set_title(f"permutation importance (top {len(shown)})")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
