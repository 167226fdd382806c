"""Data sets by URI-like name, validated once and split deterministically.

Supported names:

``digits``            scikit-learn's bundled 8x8 digits (1,797 images, no download)
``mnist-idx:<dir>``   MNIST-style IDX files (``*images-idx3-ubyte[.gz]`` and ``*labels-idx1-ubyte[.gz]``)
``npz:<path>``        a NumPy ``.npz`` with arrays ``x`` and ``y``
``csv:<path>``        a CSV with a header and a label column (default ``label``); numeric features
``images:<dir>``      one sub-folder per class holding image files

The data options ``task`` and ``metric`` say what the labels are and how models are judged
(:mod:`dlagent.ml.metrics`): ``classification`` labels are classes (integers, or names sorted
into indices), ``regression`` labels are numbers, one target or several (``label_column``
names several CSV columns separated by commas; ``y`` of an ``.npz`` may be ``(n, k)``).

A message about a data file names the file, the line or entry and the kind of problem, never
the file's content (no header values, no row contents, no decoded bytes): a person who can
only trigger a DAG must not read a file through its error messages.

Every loader returns raw arrays; :func:`validate_arrays` then checks them all the same way,
and :func:`split_dataset` makes a stratified train/validation/test split from a seed, so the
same name and seed always give the same split in every task that loads it.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import CACHE_MODES, MISSING_POLICIES
from dlagent.ml.metrics import CLASSIFICATION, REGRESSION, TASKS, Metric, get_metric, resolve_metric
from dlagent.validation import check_choice

SCHEMES = ("digits", "mnist-idx", "npz", "csv", "images")
MIN_SAMPLES_PER_CLASS = 3  # one each for train, validation and test
REGRESSION_LIKE_CLASSES = 20  # more distinct labels than this, most of them rare: a regression target, not classes
REGRESSION_FIX = "set the data option task to 'regression' (and metric to 'rmse', 'mae' or 'r2'), or give integer class labels 0..K-1."
CLASSIFICATION_FIX = "set the data option task to 'classification' (the default), or give a numeric target that varies."
MAX_CLASS_LIKE_VALUES = 10  # a regression target with at most this many distinct whole values looks like class labels
MIN_REGRESSION_SAMPLES = 10


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
    raw_x_test: list | None = None  # the test split's raw rows when there is an encoding (for a model of another encoding)
    raw_x_val: list | None = None  # the same for the validation split

    def inputs_for(self, encoding_doc: dict | None, split: str = "test") -> np.ndarray:
        """The ``split`` (``"test"`` or ``"val"``) encoded for a model whose encoding is ``encoding_doc``
        (its ``encoding.json``; ``None``: a model without one). A model of another vocabulary gets
        the raw rows encoded its own way; raises :class:`ConfigError` when the columns do not fit."""
        from dlagent.ml.tabular import TableEncoding

        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        x, raw = (self.x_test, self.raw_x_test) if split == "test" else (self.x_val, self.raw_x_val)
        mine = self.encoding.to_json() if self.encoding is not None else None
        numbers_only = self.encoding is None or not self.encoding.vocabularies
        if encoding_doc == mine or (encoding_doc is None and numbers_only):  # (a model logged before encodings were)
            return x
        raw = raw if raw is not None else (x.tolist() if numbers_only and self.encoding else None)
        if encoding_doc is None or raw is None:
            raise ConfigError("encoding", "the model's categorical encoding does not match this data set's columns.",
                              "compare models trained on the same columns.")
        return TableEncoding.from_json(encoding_doc).encode(raw)

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
        }


def parse_dataset_uri(uri: str) -> tuple[str, str]:
    """Split ``scheme:argument`` and check the scheme; the argument is checked by its loader."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("dataset", f"must be a non-empty string, got {uri!r}.", _dataset_fix())
    uri = uri.strip()
    scheme, _, argument = uri.partition(":")
    if scheme not in SCHEMES:
        raise ConfigError("dataset", f"unknown data set {uri!r}.", _dataset_fix())
    if scheme == "digits":
        if argument:
            raise ConfigError("dataset", f"'digits' takes no argument, got {uri!r}.", "use 'digits'.")
    elif not argument:
        raise ConfigError("dataset", f"{scheme!r} needs a path, got {uri!r}.", f"use '{scheme}:<path>'.")
    return scheme, argument


def _dataset_fix() -> str:
    return "use one of 'digits', 'mnist-idx:<dir>', 'npz:<file>', 'csv:<file>', 'images:<dir>'."


def resolve_data_path(argument: str, *, allowed_roots: list[str] | None = None, field_name="dataset") -> Path:
    """Resolve a user path; refuse a missing path and, when roots are given, one outside them.

    Symbolic links are resolved before the check, so a link cannot lead outside a root.
    """
    path = Path(os.path.expanduser(argument)).resolve()
    check_inside_roots(path, allowed_roots, argument=argument, field_name=field_name)
    if not path.exists():
        raise ConfigError(field_name, f"path {argument!r} does not exist.", "check the path, relative to the working directory.")
    return path


def check_inside_roots(path: Path, allowed_roots: list[str] | None, *, argument=None, field_name="dataset") -> Path:
    """Refuse ``path`` (resolved: symbolic links followed) when it is outside every allowed root.

    Used for the data set path itself and for every file a loader opens inside a folder, so
    a symbolic link inside a data root cannot lead to a file outside the roots.
    """
    if not allowed_roots:
        return path
    resolved = Path(path).resolve()
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    if not any(resolved == root or root in resolved.parents for root in roots):
        given = str(path) if argument is None else argument
        raise ConfigError(
            field_name,
            f"path {given!r} resolves to {str(resolved)!r}, outside the allowed data roots {[str(r) for r in roots]}; "
            "it was not opened.",
            "put the data under one of those roots, or add the folder to DLAGENT_DATA_ROOTS (os.pathsep-separated).",
        )
    return resolved


def load_arrays(uri: str, *, label_column: str = "label", allowed_roots: list[str] | None = None, missing: str = "refuse",
                task: str = CLASSIFICATION):
    """Load ``(x, y, names)`` for a data set name, without splitting or scaling (with
    ``missing="impute"`` an empty CSV cell is read as NaN). ``names`` are the class names, or
    for ``task="regression"`` the target names, and ``y`` is then float ``(n, k)``. A CSV's
    categorical column holds codes into its sorted values (:class:`CsvColumns`)."""
    return _load_with_columns(uri, label_column=label_column, allowed_roots=allowed_roots, missing=missing, task=task)[:3]


def _load_with_columns(uri: str, *, label_column: str, allowed_roots, missing: str, task: str):
    """:func:`load_arrays` plus the CSV's :class:`CsvColumns` (``None`` for other data)."""
    scheme, argument = parse_dataset_uri(uri)
    if scheme == "images" and task == REGRESSION:
        raise ConfigError("task", "'images:' data holds one folder per class: class labels, not numeric targets.",
                          "use task 'classification', or give the targets in a csv: or npz: file.")
    if scheme == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.images.astype(np.float32) / 16.0
        y, names = bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]
    else:
        path = resolve_data_path(argument, allowed_roots=allowed_roots)
        if scheme == "csv":
            return _load_csv_table(path, label_column, missing, task)
        if scheme == "npz":
            return (*_load_npz(path, task), None)
        if scheme == "mnist-idx":
            x, y, names = _load_mnist_idx(path, allowed_roots)
        else:
            return (*_load_image_folder(path, allowed_roots), None)
    return ((x, *_targets_from_values(y, ["target"])) if task == REGRESSION else (x, y, names)) + (None,)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:  # e.g. BadGzipFile, whose message quotes the file's first bytes
        raise ConfigError("dataset", f"cannot read IDX file {str(path)!r} ({type(exc).__name__}: unreadable or not gzip).",
                          "re-copy the file.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError("dataset", f"{str(path)!r} is not an unsigned-byte IDX file.", "give MNIST-format IDX files.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ConfigError("dataset", f"{str(path)!r} is truncated: {len(raw) - offset} bytes for shape {dims}.", "re-copy the file.")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _find_one(directory: Path, pattern: str, allowed_roots=None) -> Path:
    matches = sorted(directory.glob(pattern))
    if not matches:
        raise ConfigError("dataset", f"no file matching {pattern!r} in {str(directory)!r}.", "point mnist-idx: at a folder with IDX files.")
    return check_inside_roots(matches[0], allowed_roots)


def _load_mnist_idx(directory: Path, allowed_roots=None):
    if not directory.is_dir():
        raise ConfigError("dataset", f"mnist-idx needs a folder, got file {str(directory)!r}.", "give the folder holding the IDX files.")
    images = _read_idx(_find_one(directory, "*images-idx3-ubyte*", allowed_roots))
    labels = _read_idx(_find_one(directory, "*labels-idx1-ubyte*", allowed_roots))
    return images.astype(np.float32) / 255.0, labels.astype(np.int64), [str(i) for i in range(int(labels.max()) + 1)]


def _load_npz(path: Path, task: str = CLASSIFICATION):
    import zipfile

    fix = "save it with np.savez(path, x=..., y=...)."
    if not path.is_file():
        raise ConfigError("dataset", f"npz: needs a file, got folder {str(path)!r}.", fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ConfigError("dataset", f"{str(path)!r} holds a single array (.npy), not an .npz archive of x and y.", fix)
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise ConfigError("dataset", f"{str(path)!r} lacks arrays {sorted(missing)} ({len(archive.files)} other arrays in it).", fix)
            x, y = archive["x"], archive["y"]
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # empty or truncated files, pickled objects (refused: allow_pickle=False), not a zip at all
        if "allow_pickle" in str(exc):
            raise ConfigError("dataset", f"{str(path)!r} holds object arrays, which only pickle can load; pickle is never loaded "
                              "(a pickle can run code).", "store x and y as numeric (or string label) arrays.") from exc
        raise ConfigError("dataset", f"cannot read {str(path)!r} as .npz ({type(exc).__name__}: empty, truncated or not an npz archive).",
                          fix) from exc
    except TypeError as exc:  # np.load of a plain .npy returns an array, which is not a context manager
        raise ConfigError("dataset", f"{str(path)!r} holds a single array (.npy), not an .npz archive of x and y.", fix) from exc
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        raise ConfigError("dataset", f"x in {str(path)!r} has dtype {x.dtype}, not numeric.", "store features as numbers.")
    # 8-bit images are scaled like the other image loaders; other numbers are kept as given.
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if task == REGRESSION:
        return (x, *_targets_from_values(y, None))
    y, names = _labels_from_values(y)
    return x, y, names


def _targets_from_values(values, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Regression targets as float32 ``(n, k)`` and their names (``target``, ``target_1``... when unnamed)."""
    values = np.asarray(values)
    if values.ndim not in (1, 2):
        raise ConfigError("dataset", f"regression targets must be (samples,) or (samples, targets), got shape {values.shape}.",
                          "give one row of target values per sample.")
    if not (np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_):
        raise ConfigError("dataset", f"regression targets must be numbers, got {values.dtype} values: these look like class labels.",
                          CLASSIFICATION_FIX)
    y = values.astype(np.float32).reshape(len(values), -1)
    if names is None or len(names) != y.shape[1]:
        names = ["target"] if y.shape[1] == 1 else [f"target_{i}" for i in range(y.shape[1])]
    return y, list(names)


def _labels_from_values(values) -> tuple[np.ndarray, list[str]]:
    """Integer labels stay as they are (range checked later); strings become sorted indices."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ConfigError("dataset", f"labels must be one-dimensional, got shape {values.shape}.", "give one label per sample.")
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64), [str(i) for i in range(int(values.max()) + 1 if values.size else 0)]
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ConfigError("dataset", "labels must be whole numbers; found NaN or inf.", "give integer class labels 0..K-1.")
        if not np.all(values == np.round(values)):
            raise ConfigError("dataset", f"labels must be whole numbers, but {int((values != np.round(values)).sum())} of them have "
                              "fractions: this looks like a regression target (a measured quantity), not class labels.",
                              REGRESSION_FIX)
        return values.astype(np.int64), [str(i) for i in range(int(values.max()) + 1 if values.size else 0)]
    names = sorted({str(v) for v in values})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), names


@dataclass(frozen=True)
class CsvColumns:
    """A CSV's feature columns as loaded: their names in file order, and for each categorical
    (non-numeric) column the sorted distinct values its codes in ``x`` index."""

    names: list[str]
    categories: dict[int, list[str]]

    def raw_rows(self, x: np.ndarray) -> list[list]:
        """Rows of raw values back from loaded features (codes to strings, NaN to ``None``)."""
        rows = []
        for row in x:
            rows.append([None if math.isnan(v) else (self.categories[j][int(v)] if j in self.categories else float(v))
                         for j, v in enumerate(row.tolist())])
        return rows

    def categorical_values(self, x: np.ndarray) -> dict[str, list]:
        return {self.names[j]: [None if math.isnan(v) else values[int(v)] for v in x[:, j].tolist()]
                for j, values in self.categories.items()}


def _load_csv_table(path: Path, label_column: str, missing: str = "refuse", task: str = CLASSIFICATION):
    """``(x, y, names, columns)``: numeric cells as numbers, a categorical column's cells as codes
    into ``columns.categories`` (a column is categorical when at least half of its non-empty
    cells are not numbers), an empty cell as NaN under ``missing: impute``."""
    if not path.is_file():
        raise ConfigError("dataset", f"csv: needs a file, got folder {str(path)!r}.", "give the path of a .csv file.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise ConfigError("dataset", f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                          "save the CSV as UTF-8 text (a binary or other-encoding file cannot be read).") from exc
    except csv.Error as exc:
        raise ConfigError("dataset", f"{str(path)!r} is not a readable CSV ({type(exc).__name__}).", "save it as plain comma-separated text.") from exc
    if not rows:
        raise ConfigError("dataset", f"{str(path)!r} is empty.", "give a CSV with a header row and data rows.")
    header = [h.strip() for h in rows[0]]
    label_columns = [c.strip() for c in label_column.split(",")] if task == REGRESSION else [label_column]
    for name in label_columns:
        if name not in header:
            raise ConfigError("label_column", f"{str(path)!r} has no column named {name!r} among its {len(header)} header columns.",
                              "name the label column in the label_column setting (the header is the file's first line; "
                              "several regression targets: 'a,b').")
    label_at = [header.index(name) for name in label_columns]
    feature_at = [i for i in range(len(header)) if i not in label_at]
    seen = {}
    for i in feature_at:  # columns are found by name when a raw row is scored (never quoted: the header is content)
        if header[i] in seen:
            raise ConfigError("dataset", f"{str(path)!r}: columns {seen[header[i]] + 1} and {i + 1} of the header have the same name.",
                              "give every column its own name.")
        seen[header[i]] = i
    cells, labels, lines = [], [], []
    for line_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError("dataset", f"{str(path)!r} line {line_number} has {len(row)} fields, the header has {len(header)}.", "fix the ragged row.")
        labels.append([row[i].strip() for i in label_at])
        texts = [row[i].strip() for i in feature_at]
        if missing != "impute":
            for j, text in enumerate(texts):
                if not text:
                    raise ConfigError("dataset", f"{str(path)!r} line {line_number}, column {feature_at[j] + 1}: an empty cell.",
                                      "fill it, or set the data option missing to 'impute' (the training split's median or most "
                                      "frequent value, and a was-missing indicator column).")
        cells.append(texts)
        lines.append(line_number)
    if not labels:
        raise ConfigError("dataset", f"{str(path)!r} has a header but no data rows.", "add data rows.")
    x, columns = _encode_cells(path, cells, lines, [header[i] for i in feature_at], [i + 1 for i in feature_at])
    if task == REGRESSION:
        return x, *_csv_targets(path, labels, label_columns), columns
    labels = [row[0] for row in labels]
    for parse in (int, float, str):  # whole numbers, then numbers with fractions (refused, with the reason), then names
        try:
            parsed = np.array([parse(v) for v in labels])
        except ValueError:
            continue
        y, names = _labels_from_values(parsed)
        break
    return x, y, names, columns


def _encode_cells(path: Path, cells: list[list[str]], lines: list[int], names: list[str], positions: list[int]):
    """Feature cells as float32: numbers as numbers, a categorical column (most of its cells not
    numbers) as codes into its sorted values. A column of mostly numbers with a few words is
    refused at its first word: a typo, not a category."""
    x = np.full((len(cells), len(names)), np.nan, np.float32)
    categories = {}
    for j in range(len(names)):
        texts = [row[j] for row in cells]
        numeric = [bool(t) and _is_float(t) for t in texts]
        present = [t for t in texts if t]
        if sum(numeric) == len(present):
            x[:, j] = [float(t) if t else math.nan for t in texts]
        elif sum(numeric) * 2 > len(present):
            first = next(i for i, t in enumerate(texts) if t and not numeric[i])
            raise ConfigError("dataset", f"{str(path)!r} line {lines[first]}, column {positions[j]}: a feature that is not a number, "
                              "in a column of numbers.", "correct the cell (a column of mostly numbers is numeric; a categorical "
                              "column holds mostly non-numeric values).")
        else:
            values = sorted(set(present))
            code = {value: i for i, value in enumerate(values)}
            x[:, j] = [code[t] if t else math.nan for t in texts]
            categories[j] = values
    return x, CsvColumns(names, categories)


def _csv_targets(path: Path, labels: list[list[str]], names: list[str]) -> tuple[np.ndarray, list[str]]:
    for line_number, row in enumerate(labels, start=2):
        for name, text in zip(names, row, strict=True):
            if not _is_float(text):
                what = "is empty" if not text else "is not a number: the column holds class labels"
                raise ConfigError("dataset", f"{str(path)!r} line {line_number}, target column {name!r} {what}.",
                                  "fill the target (rows without one cannot be used)" if not text else CLASSIFICATION_FIX)
    return _targets_from_values(np.array([[float(t) for t in row] for row in labels]), names)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_image_folder(directory: Path, allowed_roots=None):
    from dlagent.ml.streaming import scan_image_folder

    return _decode_images(scan_image_folder(directory, allowed_roots))


def _decode_images(scanned):
    """The scanned files' pixels in memory, float32 in [0, 1], every image in the first one's
    size and mode (grayscale or RGB). 8-bit PNG and JPEG go through the streaming decoder
    (:class:`dlagent.ml.streaming.ImageFiles`), so a folder has the same pixels whether it is
    held in memory or streamed; other formats (TIFF, WebP, BMP, GIF, 16-bit) through Pillow."""
    import warnings

    from dlagent.ml.streaming import ImageFiles

    if scanned.streamable():
        return ImageFiles(scanned.paths, scanned.size, scanned.channels)[:], scanned.labels, scanned.class_names

    from PIL import Image

    from dlagent.ml.streaming import _image_errors

    mode, size = ("L" if scanned.channels == 1 else "RGB"), (scanned.size[1], scanned.size[0])
    images = np.empty((len(scanned.paths), scanned.size[0], scanned.size[1], *(() if mode == "L" else (3,))), np.float32)
    for i, file in enumerate(scanned.paths):
        with _image_errors(file), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                img.load()
                img = img.convert(mode)
                images[i] = np.asarray(img if img.size == size else img.resize(size), dtype=np.float32) / 255.0
    return images, scanned.labels, scanned.class_names


def validate_arrays(x: np.ndarray, y: np.ndarray, class_names: list[str] | None = None, *, missing: str = "refuse",
                    task: str = CLASSIFICATION) -> int:
    """Check features and labels; return the number of classes (for regression: of targets).

    Raises :class:`ConfigError` for an empty set, mismatched lengths, non-numeric or
    non-finite features, labels outside ``0..K-1``, a single class, or a class too small
    to appear in each of train, validation and test; for regression, for non-finite or
    constant targets, too few samples, or targets that look like class labels.
    """
    _validate_features(x, y, missing)
    if task == REGRESSION:
        return _validate_targets(y)
    return _validate_labels(y, class_names)


def _validate_targets(y: np.ndarray) -> int:
    if len(y) < MIN_REGRESSION_SAMPLES:
        raise ConfigError("dataset", f"has {len(y)} samples; regression needs at least {MIN_REGRESSION_SAMPLES} for a "
                          "train/validation/test split.", "add samples.")
    bad = ~np.isfinite(y)
    if bad.any():
        first = int(np.argwhere(bad.any(axis=1))[0][0])
        raise ConfigError("dataset", f"{int(bad.sum())} NaN/inf target values (first in sample {first}).",
                          "drop the samples without a target, or fill them.")
    for column in range(y.shape[1]):
        distinct = np.unique(y[:, column])
        if len(distinct) < 2:
            raise ConfigError("dataset", f"target {column} is constant: there is nothing to learn.", CLASSIFICATION_FIX)
        if len(distinct) <= MAX_CLASS_LIKE_VALUES and np.all(distinct == np.round(distinct)):
            raise ConfigError("dataset", f"target {column} takes only {len(distinct)} distinct whole values: this looks like "
                              "class labels, not a regression target.", CLASSIFICATION_FIX)
    return int(y.shape[1])


def _validate_features(x: np.ndarray, y: np.ndarray, missing: str) -> None:
    if x.ndim < 2:
        raise ConfigError("dataset", f"features must be (samples, features...) with at least 2 dimensions, got shape {x.shape}.",
                          "store one row of features per sample, e.g. shape (n, d) for tables or (n, height, width) for images.")
    if len(x) == 0 or x[0].size == 0:
        raise ConfigError("dataset", f"is empty: features of shape {x.shape}.", "give at least one sample with at least one feature.")
    if len(x) != len(y):
        raise ConfigError("dataset", f"{len(x)} feature rows but {len(y)} labels.", "give one label per sample.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError("dataset", f"features have dtype {x.dtype}, not floating point.", "convert features to numbers.")
    if missing == "impute" and np.isnan(x).any() and x.ndim != 2:
        raise ConfigError("data_options.missing", f"'impute' fills missing values of tables; these samples have shape {x.shape[1:]}.",
                          "clean the images, or use missing 'refuse'.")
    bad = np.isinf(x) if missing == "impute" else ~np.isfinite(x)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0][0])
        raise ConfigError("dataset", f"{int(bad.sum())} NaN/inf feature values (first in sample {first}).",
                          "clean the data, or set the data option missing to 'impute' (NaN only; inf is never imputed).")


def _validate_labels(y: np.ndarray, class_names: list[str] | None) -> int:
    if y.min() < 0:
        raise ConfigError("dataset", f"labels must be >= 0; {int((y < 0).sum())} are negative.", "give integer class labels 0..K-1.")
    num_classes = int(y.max()) + 1
    if class_names and len(class_names) < num_classes:
        raise ConfigError("dataset", f"the largest label is out of range for {len(class_names)} classes.", "give integer class labels 0..K-1.")
    counts = np.bincount(y, minlength=num_classes)
    present = int((counts > 0).sum())
    if present < 2:
        raise ConfigError("dataset", f"has a single class ({present} distinct label); a classifier needs at least 2.", "add samples of other classes.")
    observed = counts[counts > 0]
    rare = int((observed < MIN_SAMPLES_PER_CLASS).sum())
    gaps = bool((counts == 0).any())
    named = bool(class_names) and list(class_names) != [str(i) for i in range(len(class_names))]  # folders, words: never a quantity
    if not named and len(observed) > REGRESSION_LIKE_CLASSES and (rare > len(observed) / 2 or gaps):
        how = f"{rare} of them occur fewer than {MIN_SAMPLES_PER_CLASS} times" + (f" or leave gaps in 0..{num_classes - 1}" if gaps else "")
        raise ConfigError("dataset", f"the labels take {len(observed)} distinct values and {how}: this looks like a regression "
                          "target (a count or a measured quantity), not class labels.", REGRESSION_FIX)
    if gaps:
        raise ConfigError("dataset", f"labels must be consecutive from 0; {int((counts == 0).sum())} labels in that range have no samples.",
                          "re-number the labels 0..K-1.")
    if counts.min() < MIN_SAMPLES_PER_CLASS:
        raise ConfigError("dataset", f"{rare} class(es) have fewer than {MIN_SAMPLES_PER_CLASS} samples "
                          f"(the smallest has {int(counts.min())}); each class needs at least {MIN_SAMPLES_PER_CLASS} for a "
                          "train/validation/test split.", "add samples or drop the class.")
    return num_classes


def split_dataset(x, y, *, seed: int, val_fraction: float, test_fraction: float, task: str = CLASSIFICATION):
    """Seeded split into train/validation/test (the same seed gives the same split), stratified
    by class for classification (:mod:`dlagent.ml.splits`: scikit-learn's indices, without its import)."""
    from dlagent.ml.splits import train_test_split

    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 0.5:
            raise ConfigError(name, f"must be in (0, 0.5), got {value!r}.", "use e.g. 0.15.")
    if task == REGRESSION:
        count = max(2, int(round(test_fraction * len(y))))
        x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=count, seed=seed)
        count = max(2, int(round(val_fraction * len(y))))
        x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=count, seed=seed)
        return x_train, y_train, x_val, y_val, x_test, y_test
    classes = int(y.max()) + 1

    def _fraction(fraction: float, n: int) -> int:
        return max(classes, int(round(fraction * n)))

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=_fraction(test_fraction, len(y)), stratify=y, seed=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=_fraction(val_fraction, len(y)), stratify=y_rest, seed=seed
    )
    return x_train, y_train, x_val, y_val, x_test, y_test


DATA_OPTIONS = ("label_column", "max_samples", "val_fraction", "test_fraction", "missing", "task", "metric", "cache")


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
    max_samples: int | None = None,
    allowed_roots: list[str] | None = None,
    missing: str = "refuse",
    task: str = CLASSIFICATION,
    metric: str | None = None,
    cache: str = "auto",
) -> DatasetSplits:
    """Load, validate and split a data set by name.

    ``max_samples`` keeps a (stratified, for classes) subset first (for quick runs and tests).
    ``task`` and ``metric`` (empty: the task's default) are checked before the data is read.
    ``cache`` (image folders): ``auto`` holds a folder whose pixels fit the cache budget in
    memory and streams a larger one (:mod:`dlagent.ml.streaming`); ``memory`` or ``stream``.
    """
    from dlagent.ml.lineage import content_digest

    check_choice("data_options.missing", missing, MISSING_POLICIES)
    check_choice("task", task, TASKS)
    check_choice("data_options.cache", cache, CACHE_MODES)
    resolve_metric(task, metric)
    streamed = None
    if parse_dataset_uri(uri)[0] == "images" and task != REGRESSION:
        x, y, class_names, digest, streamed = _load_images(uri, allowed_roots, cache)
        columns = None
        num_classes = _validate_labels(y, class_names) if streamed else validate_arrays(x, y, class_names, missing=missing, task=task)
    else:
        x, y, class_names, columns = _load_with_columns(uri, label_column=label_column, allowed_roots=allowed_roots, missing=missing, task=task)
        num_classes = validate_arrays(x, y, class_names, missing=missing, task=task)
        digest = content_digest(x, y, extra=json.dumps(columns.categories, sort_keys=True) if columns and columns.categories else "")
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

        encoding = fit_encoding(columns.names, {}, missing == "impute")
    if streamed is not None:  # the split was made on file indices: each part becomes its files
        parts = tuple(streamed.subset(part[:, 0]) if i % 2 == 0 else part for i, part in enumerate(parts))
    if columns is not None and columns.categories:
        parts, encoding, raw = _encode_categorical(parts, columns, impute=missing == "impute")
    return DatasetSplits(uri, *parts, num_classes=num_classes, class_names=names, digest=digest,
                         impute=missing == "impute" and x.ndim == 2 and streamed is None, task=task, metric=primary.name,
                         encoding=encoding, raw_x_val=raw[0], raw_x_test=raw[1])


def _load_images(uri: str, allowed_roots, cache: str):
    """``(x, y, class_names, digest, streamed)`` of an image folder, scanned once
    (:func:`dlagent.ml.streaming.scan_image_folder`): decoded pixels in ``x`` when they are held
    in memory (``streamed`` ``None``), else file indices in ``x`` and ``streamed`` the files."""
    from dlagent.ml.streaming import ImageFiles, scan_image_folder, use_memory

    scanned = scan_image_folder(resolve_data_path(parse_dataset_uri(uri)[1], allowed_roots=allowed_roots), allowed_roots)
    if use_memory(scanned, cache):
        x, y, names = _decode_images(scanned)
        return x, y, names, scanned.digest, None
    files = ImageFiles(scanned.paths, scanned.size, scanned.channels)
    return np.arange(len(scanned.paths))[:, None], scanned.labels, scanned.class_names, scanned.digest, files


def _encode_categorical(parts, columns: CsvColumns, *, impute: bool):
    """One-hot the categorical columns with a vocabulary learned from the training split only
    (:mod:`dlagent.ml.tabular`); every split goes through the same :meth:`TableEncoding.encode`
    a server uses on raw rows. Returns the encoded parts, the encoding and the validation and
    test splits' raw rows."""
    from dlagent.ml.tabular import fit_encoding

    x_train, y_train, x_val, y_val, x_test, y_test = parts
    encoding = fit_encoding(columns.names, columns.categorical_values(x_train), impute)
    raw_val, raw_test = columns.raw_rows(x_val), columns.raw_rows(x_test)
    encoded = [encoding.encode(columns.raw_rows(x_train)), encoding.encode(raw_val), encoding.encode(raw_test)]
    return (encoded[0], y_train, encoded[1], y_val, encoded[2], y_test), encoding, (raw_val, raw_test)
