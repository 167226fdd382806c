"""Data sets by URI-like name, validated once and split deterministically.

Supported names:

``digits``            scikit-learn's bundled 8x8 digits (1,797 images, no download)
``mnist-idx:<dir>``   MNIST-style IDX files (``*images-idx3-ubyte[.gz]`` and ``*labels-idx1-ubyte[.gz]``)
``npz:<path>``        a NumPy ``.npz`` with arrays ``x`` and ``y``
``csv:<path>``        a CSV with a header and a label column (default ``label``); numeric features
``images:<dir>``      one sub-folder per class holding image files (at any depth below it)

The data options ``task`` and ``metric`` say what the labels are and how models are judged
(:mod:`dlagent.ml.metrics`): ``classification`` labels are classes (integers, or names sorted
into indices), ``regression`` labels are numbers, one target or several (``label_column``
names several CSV columns separated by commas; ``y`` of an ``.npz`` may be ``(n, k)``).

Each format is read by :mod:`dlagent.ml.data_readers` (the names and data roots:
:mod:`dlagent.ml.data_paths`) into raw arrays; :func:`~dlagent.ml.data_checks.validate_arrays`
then checks them all the same way, and :func:`split_dataset` makes a stratified
train/validation/test split from a seed, so the same name and seed always give the same split in
every task that loads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import CACHE_MODES, COLOR_MODES, MISSING_POLICIES
from dlagent.ml.csv_table import CsvColumns, RawRows
from dlagent.ml.data_checks import MIN_REGRESSION_SAMPLES, MIN_SAMPLES_PER_CLASS, validate_arrays, validate_labels
from dlagent.ml.data_paths import parse_dataset_uri, resolve_data_path
from dlagent.ml.data_readers import decode_images, read_dataset
from dlagent.ml.metrics import CLASSIFICATION, REGRESSION, TASKS, Metric, get_metric, resolve_metric
from dlagent.ml.streaming import parse_image_size
from dlagent.validation import check_choice


@dataclass(frozen=True)
class DatasetSplits:
    """A data set split into train/validation/test arrays, and the problem it poses: its ``task``
    and primary ``metric`` (:mod:`dlagent.ml.metrics`). For regression ``y`` is float ``(n, k)``
    and ``num_classes`` is the number of targets ``k`` (the model's outputs),
    ``class_names`` their names."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    digest: str = ""  # of the loaded samples before splitting (dlagent.ml.lineage.content_digest)
    impute: bool = False  # missing "impute": the model fills NaN features itself (dlagent.ml.layers.ImputeMissing)
    task: str = CLASSIFICATION
    metric: str = "accuracy"  # the primary metric's name
    encoding: object = None  # a table's categorical columns (dlagent.ml.tabular.TableEncoding); x_* are encoded
    raw_x_test: Sequence | None = None  # the test split's raw rows when there is an encoding (for a model of another encoding)
    raw_x_val: Sequence | None = None  # the same for the validation split

    def inputs_for(self, encoding_doc: dict | None, split: str = "test") -> np.ndarray:
        """The ``split`` (``"test"`` or ``"val"``) encoded for a model whose encoding is ``encoding_doc``
        (its ``encoding.json``; ``None``: a model without one). A model of another vocabulary gets
        the raw rows encoded its own way; raises :class:`ConfigError` when the columns do not fit."""
        from dlagent.ml.tabular import TableEncoding, file_rows

        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        x, raw = (self.x_test, self.raw_x_test) if split == "test" else (self.x_val, self.raw_x_val)
        mine = self.encoding.to_json() if self.encoding is not None else None
        numbers_only = self.encoding is None or not self.encoding.text_columns
        if encoding_doc == mine or (encoding_doc is None and numbers_only):  # (a model logged before encodings were)
            return x
        if encoding_doc is None or (raw is None and not (numbers_only and self.encoding)):
            raise ConfigError("encoding", "the model's categorical encoding does not match this data set's columns.",
                              "compare models trained on the same columns.")
        other = TableEncoding.from_json(encoding_doc)
        loaded, columns = (raw.x, raw.columns) if isinstance(raw, RawRows) else (x, CsvColumns(list(other.columns), {}))
        if len(other.columns) == len(columns.names) and (
                {j for j, column in enumerate(other.columns) if column in other.text_columns} == set(columns.categories)):
            return other.encode_table(loaded, columns.categories)  # the loaded rows, encoded its way (on read, when streamed)
        from dlagent.ml.streaming import is_streamed

        if is_streamed(loaded):  # encoded a chunk at a time as it is read, never the whole split as Python rows
            return loaded.encoded(lambda chunk, positions: other.encode(columns.raw_rows(chunk), where=file_rows(positions)),
                                  other.width)
        return other.encode(raw if raw is not None else x.tolist())

    @property
    def primary(self) -> Metric:
        return get_metric(self.metric)

    @property
    def is_regression(self) -> bool:
        return self.task == REGRESSION

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim in (3, 4)

    def summary(self) -> dict:
        from dlagent.ml.streaming import is_streamed

        return {
            "dataset": self.name,
            "task": self.task,
            "metric": self.metric,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "n_train": int(len(self.y_train)),
            "n_val": int(len(self.y_val)),
            "n_test": int(len(self.y_test)),
            "streamed": is_streamed(self.x_train),  # read from disk a batch at a time, not held in memory
            "digest": self.digest or None,  # of the content (dlagent.ml.lineage): the agent compares it with the champion's data
        }

    def meaning_digests(self) -> dict:
        """Short digests of what the model's outputs and inputs mean: ``class_names`` (``None`` for
        classes numbered ``0..K-1`` or regression) and ``encoding`` (a table's column names and
        categorical vocabularies; ``None`` for data that is not a CSV table). Two data sets of the same shape feed one model
        consistently only when these agree (a federated site's file against the coordinator's)."""
        import hashlib

        def digest(value) -> str:
            return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]

        numbered = self.is_regression or list(self.class_names) == [str(i) for i in range(len(self.class_names))]
        return {"class_names": None if numbered else digest(list(self.class_names)),
                "encoding": digest([self.encoding.columns, self.encoding.vocabularies, *([self.encoding.dates] if self.encoding.dates else [])])
                if self.encoding is not None else None}



def split_dataset(x, y, *, seed: int, val_fraction: float, test_fraction: float, task: str = CLASSIFICATION):
    """Seeded split into train/validation/test (the same seed gives the same split), stratified
    by class for classification (:mod:`dlagent.ml.splits`: scikit-learn's indices, without its import).

    The two splits (test off the whole, then validation off the rest) are made on indices, and
    ``x`` is indexed once per part: each row is copied once, with no intermediate "rest" copy."""
    from dlagent.ml.splits import split_indices

    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 0.5:
            raise ConfigError(name, f"must be in (0, 0.5), got {value!r}.", "use e.g. 0.15.")
    n = len(y)
    if task == REGRESSION:
        n_test, n_val, stratify = max(2, int(round(test_fraction * n))), max(2, int(round(val_fraction * n))), None
    else:
        classes = int(y.max()) + 1
        n_test, n_val = max(classes, int(round(test_fraction * n))), max(classes, int(round(val_fraction * n)))
        stratify = y
    rest, test = split_indices(n, n_train=n - n_test, n_test=n_test, seed=seed, stratify=stratify)
    train, val = split_indices(len(rest), n_train=len(rest) - n_val, n_test=n_val, seed=seed,
                               stratify=None if stratify is None else y[rest])
    train, val = rest[train], rest[val]
    return x[train], y[train], x[val], y[val], x[test], y[test]


DATA_OPTIONS = ("label_column", "drop_columns", "max_samples", "val_fraction", "test_fraction", "missing", "task", "metric", "cache", "image_size",
                "color_mode")


def column_names(field: str, value) -> tuple[str, ...]:
    """Column names given as ``'a,b'`` or a list, stripped (empty: none); refused, naming ``field``,
    when not text or named twice."""
    if value is None or value == "":
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(field, f"must be column names, as 'a,b' or a list of names, got {field}={value!r}.", "give e.g. 'id,email'.")
    names = tuple(n.strip() for n in names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(field, f"names column {twice[0]!r} twice.", "name each column once.")
    return names


def load_dataset_with_options(uri: str, options: dict | None, *, seed: int, allowed_roots=None) -> DatasetSplits:
    """:func:`load_dataset` with the options a person passes as JSON (unknown keys refused)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DATA_OPTIONS))
    if unknown:
        raise ConfigError(f"data_options.{unknown[0]}", f"unknown option (known: {list(DATA_OPTIONS)}).", "remove it or fix its spelling.")
    options = {k: v for k, v in options.items() if v is not None}
    return load_dataset(uri, seed=seed, allowed_roots=allowed_roots, **options)


def load_dataset(
    uri: str = "digits",
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    label_column: str = "label",
    drop_columns: str | list[str] | None = None,
    max_samples: int | None = None,
    allowed_roots: list[str] | None = None,
    missing: str = "refuse",
    task: str = CLASSIFICATION,
    metric: str | None = None,
    cache: str = "auto",
    image_size=None,
    color_mode: str = "auto",
) -> DatasetSplits:
    """Load, validate and split a data set by name.

    ``max_samples`` keeps a (stratified, for classes) subset first (for quick runs and tests).
    ``task`` and ``metric`` (empty: the task's default) are checked before the data is read.
    ``cache`` (image folders and CSV tables): ``auto`` holds a folder whose float32 pixels, or a
    table whose encoded splits and loaded rows, fit the cache budget in memory and streams a
    larger one (:mod:`dlagent.ml.streaming`, :func:`dlagent.ml.csv_table.streams`,
    :mod:`dlagent.ml.table_rows`); ``memory`` or ``stream`` force either.
    ``image_size`` and ``color_mode`` (image folders): every image resized to that size (empty:
    the first image's, at most 256 on its longer side) and converted to ``grayscale`` or ``rgb``
    (``auto``: rgb unless every image is grayscale).
    ``drop_columns`` (CSV tables): header columns left out, as ``'id,email'`` or a list: an
    identifier column is refused until it is (:mod:`dlagent.ml.csv_table`).
    """
    from dlagent.ml.lineage import content_digest
    from dlagent.ml.streaming import is_streamed

    check_choice("data_options.missing", missing, MISSING_POLICIES)
    check_choice("task", task, TASKS)
    check_choice("data_options.cache", cache, CACHE_MODES)
    check_choice("data_options.color_mode", color_mode, COLOR_MODES)
    resolve_metric(task, metric)
    scheme = parse_dataset_uri(uri)[0]
    dropped = column_names("drop_columns", drop_columns)
    if dropped and scheme != "csv":
        raise ConfigError("drop_columns", f"leaves columns of a 'csv:' table out; this data set is {scheme!r}.",
                          "leave drop_columns empty.")
    images = {"image_size": parse_image_size(image_size), "color_mode": color_mode}
    if scheme != "images" and (images["image_size"] or color_mode != "auto"):
        option = "image_size" if images["image_size"] else "color_mode"
        raise ConfigError(f"data_options.{option}", f"resizes and converts the images of an 'images:' folder; this data set is {scheme!r}.",
                          f"leave {option} empty ('auto' for color_mode), or resize the arrays yourself.")
    streamed = None
    if scheme == "images" and task != REGRESSION:
        x, y, class_names, digest, streamed = _load_images(uri, allowed_roots, cache, **images)
        columns = None
        num_classes = validate_labels(y, class_names) if streamed else validate_arrays(x, y, class_names, missing=missing, task=task)
    else:
        x, y, class_names, columns = read_dataset(uri, label_column=label_column, allowed_roots=allowed_roots, missing=missing, task=task,
                                                  cache=cache, drop_columns=dropped)
        num_classes = validate_arrays(x, y, class_names, missing=missing, task=task)
        digest = content_digest(x, y, extra=json.dumps(columns.categories, sort_keys=True) if columns and columns.categories else "")
        if is_streamed(x):  # a table too large to hold: split its row numbers, as an image folder's file numbers
            x, streamed = np.arange(len(x))[:, None], x
    primary = resolve_metric(task, metric, num_classes if task == CLASSIFICATION else None)
    if max_samples is not None:
        least = MIN_REGRESSION_SAMPLES if task == REGRESSION else num_classes * MIN_SAMPLES_PER_CLASS
        if not isinstance(max_samples, int) or max_samples < least:
            raise ConfigError("max_samples", f"must be an integer >= {least}" + ("" if task == REGRESSION else f" for {num_classes} classes")
                              + f", got {max_samples!r}.", "raise it or leave it empty for all samples.")
        if max_samples < len(y):
            from dlagent.ml.splits import train_test_split

            x, _, y, _ = train_test_split(x, y, train_size=max_samples, stratify=None if task == REGRESSION else y, seed=seed)
    parts = split_dataset(x, y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, task=task)
    names = class_names[:num_classes] if class_names else [str(i) for i in range(num_classes)]
    encoding, raw = None, (None, None)
    if columns is not None and not columns.categories:  # numbers only: the encoding names the columns for serving
        from dlagent.ml.tabular import fit_encoding

        encoding = fit_encoding(columns.names, {}, missing == "impute", dropped=columns.dropped)
    if streamed is not None:  # the split was made on file or row numbers: each part becomes its files or rows
        parts = _streamed_parts(parts, streamed)
    if columns is not None and columns.categories:
        parts, encoding, raw = _encode_categorical(parts, columns, impute=missing == "impute")
    return DatasetSplits(uri, *parts, num_classes=num_classes, class_names=names, digest=digest,
                         impute=missing == "impute" and (columns is not None or (x.ndim == 2 and streamed is None)), task=task,
                         metric=primary.name,
                         encoding=encoding, raw_x_val=raw[0], raw_x_test=raw[1])


def _load_images(uri: str, allowed_roots, cache: str, *, image_size=None, color_mode: str = "auto"):
    """``(x, y, class_names, digest, streamed)`` of an image folder, scanned once
    (:func:`dlagent.ml.streaming.scan_image_folder`): decoded pixels in ``x`` when they are held
    in memory (``streamed`` ``None``), else file indices in ``x`` and ``streamed`` the files."""
    from dlagent.ml.streaming import ImageFiles, scan_image_folder, sized, use_memory

    scanned = scan_image_folder(resolve_data_path(parse_dataset_uri(uri)[1], allowed_roots=allowed_roots), allowed_roots)
    scanned = sized(scanned, image_size, color_mode)
    if use_memory(scanned, cache):
        x, y, names = decode_images(scanned)
        return x, y, names, scanned.digest, None
    files = ImageFiles(scanned.paths, scanned.size, scanned.channels)
    return np.arange(len(scanned.paths))[:, None], scanned.labels, scanned.class_names, scanned.digest, files


def _streamed_parts(parts, streamed):
    """Each part's numbers become its image files, or its table rows in file order (so reading
    them goes forward through the scratch file; the labels follow)."""
    from dlagent.ml.streaming import ImageFiles

    out = []
    for x, y in zip(parts[::2], parts[1::2], strict=True):
        index = x[:, 0]
        if not isinstance(streamed, ImageFiles):
            order = np.argsort(index, kind="stable")
            index, y = index[order], y[order]
        out += [streamed.subset(index), y]
    return tuple(out)


def _encode_categorical(parts, columns: CsvColumns, *, impute: bool):
    """One-hot the categorical columns with a vocabulary learned from the training split only
    (:mod:`dlagent.ml.tabular`), counted a chunk at a time. Every split is encoded from the
    loaded rows (:meth:`TableEncoding.encode_table`: at once for an array, on each read for a
    streamed table), which gives what :meth:`TableEncoding.encode`, the function a server applies
    to raw rows, gives for the same rows. Returns the encoded parts, the encoding and the
    validation and test splits' raw rows (made when read: :class:`RawRows`)."""
    from dlagent.ml.tabular import fit_encoding_from_counts

    x_train, y_train, x_val, y_val, x_test, y_test = parts
    encoding = fit_encoding_from_counts(columns.names, columns.category_counts(x_train), impute, dropped=columns.dropped,
                                        date_columns={columns.names[j] for j in columns.dates})
    raw_val, raw_test = RawRows(x_val, columns), RawRows(x_test, columns)
    parsed = encoding.parse_dates(columns.categories)  # each distinct date once, for the three splits
    encoded = [encoding.encode_table(part, columns.categories, parsed) for part in (x_train, x_val, x_test)]
    return (encoded[0], y_train, encoded[1], y_val, encoded[2], y_test), encoding, (raw_val, raw_test)
