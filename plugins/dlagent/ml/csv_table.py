"""A CSV table read in two streaming passes: memory holds the float32 features and the labels'
codes, never the file's text.

Reading the whole file as lists of strings (``list(csv.reader(...))``) costs about 20 times the
float32 features: a 1 GB CSV would need tens of GB. Here (the file read as text by
:mod:`dlagent.ml.csv_text`, gzip-compressed or not; the separator, a comma, a semicolon or a
tab, read off the header line; a semicolon file's decimal commas are decimal points):

1. **the first pass** counts the rows, refuses a ragged row or (under ``missing: refuse``) an
   empty cell at its line, and decides each column's kind from counts alone: numeric, or
   categorical when at least half of its non-empty cells are not numbers (a missing-value mark
   such as ``NA`` in a column of numbers is an empty cell;
   :func:`~dlagent.ml.data_checks.categorical_column`); a column of mostly numbers with a stray
   word is refused at that word (a typo, not a category), so is a column of numbers written for
   people (``$1,200``, ``12%``), and a categorical column whose values are nearly all different is
   refused as an identifier (:func:`~dlagent.ml.data_checks.refuse_identifier`), except a column of
   ISO 8601 dates, which becomes calendar columns (:mod:`dlagent.ml.dates`; dates written otherwise
   are refused, :func:`~dlagent.ml.data_checks.refuse_unreadable_dates`); a column with
   neither a name nor a value (a separator closing every line) is left out, and the columns named
   in ``drop_columns`` are not read at all;
2. **the second pass** fills a preallocated float32 array a chunk of :data:`CHUNK_ROWS` rows at a
   time: numbers as numbers, a categorical cell as a code into its column's vocabulary (collected
   in this pass, then renumbered in sorted order), an empty cell (or a mark in a numeric column)
   as NaN. Class labels are kept as codes into their distinct values; regression targets as float32.

Messages name the file, the line and the column's position, never a cell's content or a header
name (the header is content: a person who can only trigger a DAG must not read a file through
its error messages).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml import csv_text
from dlagent.ml.data_checks import (
    CLASSIFICATION_FIX,
    IDENTIFIER_WINDOW,
    REGRESSION_LIKE_CLASSES,
    categorical_column,
    column_positions,
    empty_column,
    is_formatted_number,
    is_missing_mark,
    no_feature_left,
    refuse_identifier,
    refuse_marks_in_dates,
    refuse_stray_in_dates,
    refuse_unreadable_dates,
)
from dlagent.ml.dates import date_width, parse_iso_date
from dlagent.ml.metrics import CLASSIFICATION, REGRESSION

CHUNK_ROWS = 8192  # rows parsed into Python values before they are copied into the float32 array


@dataclass(frozen=True)
class CsvColumns:
    """A CSV's feature columns as loaded: their names in file order, and for each categorical
    (non-numeric) column the sorted distinct values its codes in ``x`` index."""

    names: list[str]
    categories: dict[int, list[str]]
    dropped: tuple[str, ...] = ()  # header columns left out (``drop_columns``): a served row may still carry them
    dates: frozenset = frozenset()  # the categorical columns (positions) that hold ISO 8601 dates: calendar columns

    def raw_rows(self, x: np.ndarray) -> list[list]:
        """Rows of raw values back from loaded features (codes to strings, NaN to ``None``)."""
        rows = []
        for row in x:
            rows.append([None if math.isnan(v) else (self.categories[j][int(v)] if j in self.categories else float(v))
                         for j, v in enumerate(row.tolist())])
        return rows

    def category_counts(self, x) -> dict[str, Counter]:
        """How often each value of each categorical column occurs in ``x`` (an array or a streamed
        table, read a chunk at a time); empty cells count under ``None``."""
        from dlagent.ml.table_rows import iter_chunks

        counts = {self.names[j]: Counter() for j in self.categories}
        for chunk in iter_chunks(x):
            for j, values in self.categories.items():
                column = chunk[:, j]
                empty = np.isnan(column)
                codes, n = np.unique(column[~empty].astype(np.int64), return_counts=True)
                counts[self.names[j]].update({values[code]: int(m) for code, m in zip(codes.tolist(), n.tolist(), strict=True)})
                if empty.any():
                    counts[self.names[j]][None] += int(empty.sum())
        return counts


class RawRows(Sequence):
    """A split's raw rows (lists of values in column order: strings, numbers, ``None`` for an
    empty cell), made from the loaded array when asked for: the encoding of a model of another
    vocabulary, or a test, reads them; holding them as Python lists would cost far more than the
    array."""

    def __init__(self, x: np.ndarray, columns: CsvColumns):
        self.x, self.columns = x, columns

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.columns.raw_rows(self.x[index])
        return self.columns.raw_rows(self.x[[index]])[0]

    def __iter__(self):
        for start in range(0, len(self.x), CHUNK_ROWS):
            yield from self.columns.raw_rows(self.x[start:start + CHUNK_ROWS])


@dataclass(frozen=True)
class _Layout:
    """What the first pass found: the header's label and feature positions, the number of data
    rows, and which feature columns (by position in ``feature_at``) are categorical."""

    header_width: int
    delimiter: str
    dropped: tuple[str, ...]
    label_at: list[int]
    label_names: list[str]
    feature_at: list[int]
    feature_names: list[str]
    rows: int
    categorical: frozenset
    encoded_extra: int = 0  # the columns one-hot encoding adds: per categorical column its vocabulary (and a was-missing indicator)
    dates: frozenset = frozenset()  # the categorical columns of ISO 8601 dates, decided on every cell of the file


def load_csv_table(path: Path, label_column: str, missing: str = "refuse", task: str = CLASSIFICATION, cache: str = "memory",
                   drop_columns: Sequence[str] = ()):
    """``(x, y, names, columns)``: numeric cells as numbers, a categorical column's cells as codes
    into ``columns.categories``, an empty cell as NaN under ``missing: impute``; ``names`` are the
    class names (regression: the target names).

    ``cache`` (:func:`streams`): ``memory`` gives ``x`` as a float32 array; ``stream``, or ``auto``
    for a table over the cache budget, as a :class:`~dlagent.ml.table_rows.TableRows` whose rows
    stay in a scratch file, checked for non-finite values as they are written. The columns named
    in ``drop_columns`` are left out (never read past the header)."""
    if not path.is_file():
        raise ConfigError("dataset", f"csv: needs a file, got folder {str(path)!r}.", "give the path of a .csv file.")
    with csv_text.csv_errors(path):
        before = _stamp(path)
        layout = _first_pass(path, label_column, missing, task, tuple(drop_columns))
        x, labels, categories = _second_pass(path, layout, task, streamed=streams(layout, cache), missing=missing)
        if _stamp(path) != before:
            raise _changed(path)
    columns = CsvColumns(layout.feature_names, categories, layout.dropped, layout.dates)
    if task == REGRESSION:
        return x, labels, list(layout.label_names), columns
    y, names = _class_labels(*labels)
    return x, y, names, columns


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _changed(path: Path, line: int | None = None) -> ConfigError:
    where = f" (line {line} differs)" if line is not None else ""
    return ConfigError("dataset", f"{str(path)!r} changed while it was read{where}: the two passes over it must see the same rows.",
                       "run again once the file is complete (write a new file and rename it into place, not in place).")


def _first_pass(path: Path, label_column: str, missing: str, task: str, drop_columns: tuple[str, ...] = ()) -> _Layout:
    delimiter = csv_text.delimiter_of(path)  # once: both passes read the file with it (_Layout.delimiter)
    header = csv_text.read_header(path, delimiter)
    label_names = [c.strip() for c in label_column.split(",")] if task == REGRESSION else [label_column]
    label_at, dropped_at, feature_at = column_positions(repr(str(path)), header, label_names, drop_columns)
    from dlagent.ml.tabular import MAX_VOCABULARY

    present, numeric, marked, formatted = ([0] * len(feature_at) for _ in range(4))
    first_line = [{} for _ in feature_at]  # the first line of a column's missing-value "marker", "formatted" number, "word"
    values = [set() for _ in feature_at]  # each column's distinct texts, up to the vocabulary cap: the encoded width
    window_distinct = [0] * len(feature_at)  # distinct texts among a column's first IDENTIFIER_WINDOW non-empty cells
    first_empty = [None] * len(feature_at)  # the line of a column's first empty cell
    dated = [True] * len(feature_at)  # every word so far an ISO 8601 date (with no number: a column of dates and marks)
    rows = 0
    for line, row in csv_text.rows(path, delimiter):
        if len(row) != len(header):
            raise ConfigError("dataset", f"{str(path)!r} line {line} has {len(row)} fields, the header has {len(header)}.", "fix the ragged row.")
        for i in label_at:  # an unlabelled row is no class of its own
            text = row[i].strip()
            if not text or (task == REGRESSION and is_missing_mark(text)):
                raise _no_label(path, line, header[i], task)
        for j, i in enumerate(feature_at):
            text = row[i].strip()
            if not text:
                first_empty[j] = first_empty[j] or line
                continue
            present[j] += 1
            if len(values[j]) <= MAX_VOCABULARY:
                values[j].add(text)
            if present[j] == IDENTIFIER_WINDOW:
                window_distinct[j] = len(values[j])
            if _is_float(text) and text[-1] not in "nN":  # nan, NaN, -nan: a number that says "no value"
                numeric[j] += 1
            elif is_missing_mark(text):
                marked[j] += 1
                first_line[j].setdefault("marker", line)
            elif "word" not in first_line[j] and is_formatted_number(text):  # past a word it cannot matter
                formatted[j] += 1
                first_line[j].setdefault("formatted", line)
            else:
                first_line[j].setdefault("word", line)
                if dated[j] and parse_iso_date(text) is None:
                    dated[j] = False
                    first_line[j]["not_a_date"] = line
        rows += 1
    if not rows:
        raise ConfigError("dataset", f"{str(path)!r} has a header but no data rows.", "add data rows.")
    where = repr(str(path))
    by_first_empty = sorted(range(len(feature_at)), key=lambda j: first_empty[j] or math.inf)  # an empty cell refused at the earliest line
    left_out = {j for j in by_first_empty if empty_column(where, feature_at[j] + 1, header[feature_at[j]], present[j], first_empty[j], missing)}
    if left_out:  # a column with neither a name nor a value: a separator at the end of every line
        dropped_at = [*dropped_at, feature_at[min(left_out)]]  # csv.DictReader gives a served row of the same exporter key ''
        kept = [j for j in range(len(feature_at)) if j not in left_out]
        feature_at, present, numeric, marked, formatted, first_line, values, window_distinct, dated = (
            [column[j] for j in kept] for column in (feature_at, present, numeric, marked, formatted, first_line, values, window_distinct, dated))
        no_feature_left(where, feature_at)
    categorical = {j for j, i in enumerate(feature_at) if categorical_column(
        where, i + 1, present[j], numeric[j], marked[j], formatted[j], first_line[j], missing, distinct=len(values[j]))}
    dates = {j for j in categorical if dated[j] and not numeric[j] and not formatted[j] and present[j] > marked[j]}  # calendar columns
    for j in dates:
        refuse_marks_in_dates(where, feature_at[j] + 1, first_line[j].get("marker"), missing)
    for j in categorical - dates:
        refuse_stray_in_dates(where, feature_at[j] + 1, first_line[j].get("not_a_date"), values[j])
        refuse_unreadable_dates(path, feature_at[j] + 1, values[j])
        refuse_identifier(path, feature_at[j] + 1, present[j], window_distinct[j] if present[j] >= IDENTIFIER_WINDOW else len(values[j]),
                          values[j])
    extra = sum((date_width(True) - 1 if j in dates else min(len(values[j]), MAX_VOCABULARY)) + (present[j] < rows) for j in categorical)
    return _Layout(len(header), delimiter, tuple(header[i] for i in dropped_at), label_at, label_names, feature_at, [header[i] for i in feature_at],
                   rows, frozenset(categorical), extra, frozenset(dates))


def _no_label(path: Path, line: int, name: str, task: str) -> ConfigError:
    return ConfigError("dataset", f"{str(path)!r} line {line}, {'target' if task == REGRESSION else 'label'} column {name!r} is empty.",
                       "fill it, or remove the rows without one (a row without a label cannot be used).")


def streams(layout: _Layout, cache: str) -> bool:
    """Stream the table (``True``) or hold it in memory. ``auto`` holds it when what memory would
    hold fits the cache budget: the encoded splits (a categorical column is as wide as its
    vocabulary, plus one) and the loaded rows beside them, as float32."""
    from dlagent.ml.streaming import CACHE_BUDGET_BYTES

    encoded = len(layout.feature_at) + layout.encoded_extra
    return cache == "stream" or (cache == "auto" and layout.rows * (encoded + len(layout.feature_at)) * 4 > CACHE_BUDGET_BYTES)


def _second_pass(path: Path, layout: _Layout, task: str, *, streamed: bool = False, missing: str = "refuse"):
    """``(x, labels, categories)``: the float32 features (streamed: a
    :class:`~dlagent.ml.table_rows.TableRows` of all rows), the labels (regression: float32
    targets; classes: ``(codes, distinct texts)``) and each categorical column's sorted vocabulary."""
    from dlagent.ml.table_rows import RowStore, TableRows

    store = RowStore(len(layout.feature_at)) if streamed else None
    x = None if streamed else np.empty((layout.rows, len(layout.feature_at)), np.float32)
    bad = _NonFinite(missing)
    vocabularies = {j: {} for j in layout.categorical}
    regression = task == REGRESSION
    targets = np.empty((layout.rows, len(layout.label_at)), np.float32) if regression else None
    label_codes, label_texts = (None, None) if regression else (np.empty(layout.rows, np.int64), {})
    chunk, start = [], 0
    for line, row in csv_text.rows(path, layout.delimiter):
        position = start + len(chunk)
        if position >= layout.rows or len(row) != layout.header_width:
            raise _changed(path, line)
        values = []
        for j, i in enumerate(layout.feature_at):
            text = row[i].strip()
            if not text:
                values.append(math.nan)
            elif j in vocabularies:
                values.append(vocabularies[j].setdefault(text, len(vocabularies[j])))
            else:
                try:
                    values.append(float(text))
                except ValueError:
                    if not is_missing_mark(text):
                        raise _changed(path, line) from None  # the first pass found only numbers and marks here
                    values.append(math.nan)
        if regression:
            targets[position] = _targets_of(path, line, [row[i].strip() for i in layout.label_at], layout.label_names)
        else:
            text = row[layout.label_at[0]].strip()
            label_codes[position] = label_texts.setdefault(text, len(label_texts))
        chunk.append(values)
        if len(chunk) == CHUNK_ROWS or position + 1 == layout.rows:
            if streamed:
                store.append(bad.checked(np.asarray(chunk, np.float32), start))
            else:
                x[start:start + len(chunk)] = chunk
            start, chunk = start + len(chunk), []
    if chunk or start != layout.rows:
        raise _changed(path)
    categories = {}
    for j, vocabulary in vocabularies.items():  # first-seen codes -> codes into the sorted values
        ordered = sorted(vocabulary)
        renumber = np.empty(len(vocabulary), np.float32)
        for new, value in enumerate(ordered):
            renumber[vocabulary[value]] = new
        if streamed:
            store.recode[j] = renumber
        else:
            column = x[:, j]
            known = ~np.isnan(column)
            column[known] = renumber[column[known].astype(np.int64)]
        categories[j] = ordered
    if streamed:
        bad.raise_any()
        store.finish()
        x = TableRows(store, np.arange(layout.rows))
    if regression:
        return x, _checked_targets(targets, layout.label_names), categories
    return x, (label_codes, list(label_texts)), categories


class _NonFinite:
    """The streamed reader's check for what :func:`~dlagent.ml.data_checks.validate_arrays` refuses
    in an array: an inf (a CSV cell may say ``inf``), or a NaN (``nan``) unless ``missing`` is
    ``impute``; counted over every chunk, then refused with the same message."""

    def __init__(self, missing: str):
        self.missing, self.count, self.first = missing, 0, None

    def checked(self, chunk: np.ndarray, start: int) -> np.ndarray:
        bad = np.isinf(chunk) if self.missing == "impute" else ~np.isfinite(chunk)
        if bad.any():
            self.count += int(bad.sum())
            if self.first is None:
                self.first = start + int(np.argwhere(bad.any(axis=1))[0][0])
        return chunk

    def raise_any(self) -> None:
        from dlagent.ml.data_checks import non_finite_features

        if self.count:
            raise non_finite_features(self.count, self.first)


def _targets_of(path: Path, line: int, texts: list[str], names: list[str]) -> list[float]:
    for name, text in zip(names, texts, strict=True):  # an empty target (or NA) was refused in the first pass
        if not _is_float(text):
            raise ConfigError("dataset", f"{str(path)!r} line {line}, target column {name!r} is not a number: the column holds "
                              "class labels.", CLASSIFICATION_FIX)
    return [float(t) for t in texts]


def _checked_targets(targets: np.ndarray, names: list[str]) -> np.ndarray:
    from dlagent.ml.data_readers import targets_from_values

    return targets_from_values(targets, names)[0]


def _class_labels(codes: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Class labels from the codes of their distinct texts: whole numbers 0..K-1 as they are; a few
    other whole numbers (at most :data:`~dlagent.ml.data_checks.REGRESSION_LIKE_CLASSES`: classes
    1, 2, 3 as many tables number them, -1 and 1, wine qualities 3 to 9) as classes in their
    numeric order, named by them; more of them, and numbers with fractions, as
    :func:`~dlagent.ml.data_readers.labels_from_values` takes them (refused, with the reason, when
    they look like a quantity); any other text as names in sorted order."""
    from dlagent.ml.data_readers import labels_from_values

    for parse in (int, float):
        try:
            distinct = np.array([parse(t) for t in texts])
        except ValueError:
            continue
        values = np.unique(distinct)
        if (len(values) <= REGRESSION_LIKE_CLASSES and bool(np.all(values == np.round(values)))
                and not np.array_equal(values, np.arange(len(values)))):
            return np.searchsorted(values, distinct)[codes].astype(np.int64), [str(int(v)) for v in values]
        return labels_from_values(distinct[codes])
    names = sorted(set(texts))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[t] for t in texts], np.int64)[codes], names


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
