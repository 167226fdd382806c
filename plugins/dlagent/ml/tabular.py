"""Non-numeric table columns: a vocabulary learned from the training split, one shared encoder.

A CSV column whose cells are not all numbers is *categorical*. Its vocabulary is the set of
values seen in the **training split only**; each value becomes a one-hot column, and slot 0 of
every categorical column is the out-of-vocabulary slot (a value never seen in training, at
validation, test or serving time). With ``missing: impute`` an empty categorical cell takes
the training split's most frequent value and sets a was-missing indicator column (numeric
gaps stay NaN and are filled inside the model, :class:`dlagent.ml.layers.ImputeMissing`).

Why outside the model: TFLite's built-in operators carry no string lookup, so the model (Keras
and TFLite alike) takes the encoded numeric row, and the :class:`TableEncoding` travels with
it: logged with the training run, beside the logged model's ``MLmodel`` and in the serving
bundle. :meth:`TableEncoding.encode` is the one function that turns raw rows into model
inputs, used by every place a raw row is scored (:func:`dlagent.ml.serving.load_bundle`); the
data loader encodes its splits from the loaded array with :meth:`TableEncoding.encode_loaded`,
which gives the same rows (``tests/ml/test_csv_table.py``), so training and serving cannot
drift apart.

Pure Python and NumPy: no Keras, no Airflow.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.data_checks import is_missing_mark
from dlagent.ml.dates import (
    GAP,
    NOT_A_DATE,
    ParsedDates,
    date_columns,
    date_feature_names,
    date_features,
    date_width,
    has_time_of_day,
    is_date_column,
    parse_iso_date,
)

OOV = "<other>"  # the name of a categorical column's out-of-vocabulary slot
MAX_VOCABULARY = 1000  # values per categorical column; rarer ones share the out-of-vocabulary slot


def is_missing(value) -> bool:
    """An empty cell: ``None``, NaN, or text that is blank."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _row(r: int) -> str:
    return f"row {r}"


@dataclass(frozen=True)
class TableEncoding:
    """How raw table rows become model inputs.

    ``columns`` are the feature columns in file order; ``vocabularies`` maps each categorical
    column to its training values (one-hot slots 1..V, slot 0 out of vocabulary); ``fill`` its
    most frequent training value (for ``missing: impute``), ``indicators`` the categorical
    columns that get a was-missing column. Numeric columns pass through (an empty one as NaN).
    ``dropped`` are the file's columns left out of training (``drop_columns``): a row given as a
    dict may still carry them (a record as the source system has it) and they are ignored; any
    other unknown column is refused. ``dates`` are the non-numeric columns whose training values
    are all ISO 8601 dates, each mapped to whether it has a time of day: they become calendar
    columns (:mod:`dlagent.ml.dates`), not one-hot blocks.
    """

    columns: list[str]
    vocabularies: dict[str, list[str]]
    fill: dict[str, str] = field(default_factory=dict)
    indicators: list[str] = field(default_factory=list)
    impute: bool = False
    dropped: list[str] = field(default_factory=list)
    dates: dict[str, bool] = field(default_factory=dict)

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.columns if c in self.vocabularies]

    @property
    def text_columns(self) -> list[str]:
        """The columns the CSV loader reads as text (codes into their distinct values): categories and dates."""
        return [c for c in self.columns if c in self.vocabularies or c in self.dates]

    def feature_names(self) -> list[str]:
        """The encoded columns' names: ``age``, ``colour=<other>``, ``colour=red``, ``day:weekday=Mon``, ``colour=<missing>``."""
        names = []
        for column in self.columns:
            if column in self.vocabularies:
                names += [f"{column}={OOV}"] + [f"{column}={value}" for value in self.vocabularies[column]]
            elif column in self.dates:
                names += date_feature_names(column, self.dates[column])
            else:
                names.append(column)
        return names + [f"{column}=<missing>" for column in self.indicators]

    def _width_of(self, column: str) -> int:
        if column in self.vocabularies:
            return len(self.vocabularies[column]) + 1
        return date_width(self.dates[column]) if column in self.dates else 1

    def column_groups(self) -> list[tuple[str, list[int]]]:
        """Each raw column and the encoded columns it fills (a category's one-hot block and its
        was-missing indicator): what permutation importance shuffles together."""
        groups, position = [], 0
        for column in self.columns:
            size = self._width_of(column)
            groups.append((column, list(range(position, position + size))))
            position += size
        blocks = dict(groups)  # the same lists: an indicator joins its column's block
        for column in self.indicators:
            blocks[column].append(position)
            position += 1
        return groups

    @property
    def width(self) -> int:
        return len(self.feature_names())

    def encode(self, rows, *, where: Callable[[int], str] = _row) -> np.ndarray:
        """Encode raw rows (sequences in ``columns`` order, or dicts by column name) as float32
        ``(n, width)``. A numeric cell that is not a number, a row of the wrong length, and an
        empty cell under ``missing: refuse`` raise :class:`ConfigError` naming the row and column:
        ``where(r)`` names row ``r`` of ``rows`` (default ``"row r"``; a chunk of a streamed table
        names the row in its file)."""
        index = {column: i for i, column in enumerate(self.columns)}
        slots = {c: {value: i + 1 for i, value in enumerate(vocabulary)} for c, vocabulary in self.vocabularies.items()}
        out = np.zeros((len(rows), self.width), np.float32)
        for r, row in enumerate(rows):
            cells = self._cells(row, where, r)
            position, flags = 0, []
            for column in self.columns:
                value = cells[index[column]]
                empty = is_missing(value)
                if column in self.vocabularies:
                    if empty:
                        self._refuse_empty(where(r), column)
                        value = self.fill.get(column, "")
                    out[r, position + slots[column].get(_category(value), 0)] = 1.0
                    position += len(self.vocabularies[column]) + 1
                elif column in self.dates:
                    if empty or is_missing_mark(str(value).strip()) or str(value) == "NaT":  # NA, NaN, NaT: a gap, as the loader reads it
                        self._refuse_empty(where(r), column)
                        empty = True
                    width = date_width(self.dates[column])
                    out[r, position:position + width] = date_features(None if empty else _date(value, where, r, column), self.dates[column])
                    position += width
                else:
                    number = math.nan if empty else _number(value, where, r, column)
                    if math.isnan(number):  # an empty cell, or a NaN given as a number: a gap
                        self._refuse_empty(where(r), column)
                        empty = True
                    out[r, position] = number
                    position += 1
                if column in self.indicators:
                    flags.append(1.0 if empty else 0.0)
            out[r, position:] = flags
        return out

    def encode_loaded(self, x: np.ndarray, categories: dict[int, list[str]], *, where: Callable[[int], str] = _row,
                      parsed: dict[int, ParsedDates] | None = None) -> np.ndarray:
        """What :meth:`encode` gives for the rows the CSV loader read, computed on its array at
        once (no Python object per cell): ``x`` holds numbers, and for each categorical column
        ``j`` codes into ``categories[j]`` (NaN: an empty cell). ``tests/ml/test_csv_table.py``
        checks the two agree. ``where`` names a row in an error, as for :meth:`encode`. ``parsed``:
        :meth:`parse_dates` of ``categories``, when the caller encodes many chunks with them."""
        out = np.zeros((len(x), self.width), np.float32)
        rows = np.arange(len(x))
        position, flags = 0, []
        for j, column in enumerate(self.columns):
            values = x[:, j]
            empty = np.isnan(values)
            if empty.any() and not self.impute:
                self._refuse_empty(where(int(np.argmax(empty))), column)
            if column in self.vocabularies:
                slots = {value: i + 1 for i, value in enumerate(self.vocabularies[column])}
                of_code = np.array([slots.get(_category(value), 0) for value in categories[j]] or [0], np.int64)
                filled = slots.get(_category(self.fill.get(column, "")), 0)
                slot = np.where(empty, filled, of_code[np.where(empty, 0, values).astype(np.int64)])
                out[rows, position + slot] = 1.0
                position += len(self.vocabularies[column]) + 1
            elif column in self.dates:  # each distinct text parsed once per split, not once per chunk
                dates = parsed[j] if parsed is not None and j in parsed else ParsedDates.of(categories[j])
                codes = np.where(empty, -1, values).astype(np.int64)
                kind = np.append(dates.kinds, GAP)[codes]
                if (kind == NOT_A_DATE).any():  # refused at its first row; a value only another split holds is no concern here
                    r = int(np.argmax(kind == NOT_A_DATE))
                    _date(categories[j][codes[r]], where, r, column)
                empty = kind == GAP  # an empty cell, or a missing-value mark such as NA
                if empty.any() and not self.impute:
                    self._refuse_empty(where(int(np.argmax(empty))), column)
                width = date_width(self.dates[column])
                out[:, position:position + width] = date_columns(dates, codes, self.dates[column])
                position += width
            else:
                out[:, position] = values
                position += 1
            if column in self.indicators:
                flags.append(empty)
        for k, empty in enumerate(flags):
            out[:, position + k] = empty
        return out

    def encode_table(self, x, categories: dict[int, list[str]], parsed: dict[int, ParsedDates] | None = None):
        """:meth:`encode_loaded` for a split as loaded: an array is encoded now; a streamed
        table (:class:`~dlagent.ml.table_rows.TableRows`) becomes one encoded as it is read.
        ``parsed``: :meth:`parse_dates` of ``categories`` (parsed here when not given)."""
        from dlagent.ml.streaming import is_streamed

        parsed = self.parse_dates(categories) if parsed is None else parsed
        if is_streamed(x):
            return x.encoded(lambda loaded, positions: self.encode_loaded(loaded, categories, where=file_rows(positions), parsed=parsed),
                             self.width)
        return self.encode_loaded(x, categories, parsed=parsed)

    def parse_dates(self, categories: dict[int, list[str]]) -> dict[int, ParsedDates]:
        """The date columns' distinct texts (``categories``, keyed by column position) parsed once."""
        return {j: ParsedDates.of(categories[j]) for j, column in enumerate(self.columns) if column in self.dates and j in categories}

    def _cells(self, row, where: Callable[[int], str], r: int) -> list:
        if isinstance(row, dict):
            unknown = sorted(set(row) - set(self.columns) - set(self.dropped))
            if unknown:
                raise ConfigError("instances", f"{where(r)} has unknown column {unknown[0]!r}.", f"use the columns {self.columns}.")
            return [row.get(column) for column in self.columns]
        cells = list(row)
        if len(cells) != len(self.columns):
            raise ConfigError("instances", f"{where(r)} has {len(cells)} values; the model takes {len(self.columns)} columns.",
                              f"give the values of {self.columns} in that order (or a dict by column name).")
        return cells

    def _refuse_empty(self, row: str, column: str) -> None:
        if not self.impute:
            raise ConfigError("instances", f"{row}, column {column!r}: an empty value, and the model was trained with missing 'refuse'.",
                              "fill the value (or retrain with the data option missing 'impute').")

    def to_json(self) -> dict:
        doc = {"columns": list(self.columns), "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
               "fill": dict(self.fill), "indicators": list(self.indicators), "impute": self.impute,
               "feature_names": self.feature_names()}
        if self.dropped:  # only then: an encoding of a table without any is the document it always was
            doc["dropped"] = list(self.dropped)
        if self.dates:
            doc["dates"] = dict(self.dates)
        return doc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, doc: dict) -> TableEncoding:
        return cls(columns=list(doc["columns"]), vocabularies={k: list(v) for k, v in doc["vocabularies"].items()},
                   fill=dict(doc.get("fill", {})), indicators=list(doc.get("indicators", [])), impute=bool(doc.get("impute")),
                   dropped=list(doc.get("dropped", [])), dates={k: bool(v) for k, v in doc.get("dates", {}).items()})


def file_rows(positions) -> Callable[[int], str]:
    """``where`` for rows read at ``positions`` of a streamed table: names the row in its file."""
    return lambda r: f"data row {int(positions[r]) + 1} of the file (after the header; blank lines not counted)"


def _number(value, where: Callable[[int], str], r: int, column: str) -> float:
    """A numeric cell's value: NaN (a gap) for a missing-value mark such as ``NA``, as the CSV loader reads it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        if isinstance(value, str) and is_missing_mark(value.strip()):
            return math.nan
        raise ConfigError("instances", f"{where(r)}, column {column!r}: not a number (a numeric column in training).",
                          "give a number.") from None
    if math.isinf(number):
        raise ConfigError("instances", f"{where(r)}, column {column!r}: an infinite value.", "give a finite number.")
    return number


def _date(value, where: Callable[[int], str], r: int, column: str):
    moment = parse_iso_date(value)
    if moment is None:
        raise ConfigError("instances", f"{where(r)}, column {column!r}: not an ISO 8601 date (a date column in training).",
                          "give a date as 2024-03-01 or a timestamp as 2024-03-01T14:30:00.")
    return moment


def _category(value) -> str:
    """A categorical value as the text the CSV held: ``1.0`` sent as a number is ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def fit_encoding(columns: list[str], categorical: dict[str, list], impute: bool, dropped=()) -> TableEncoding:
    """Learn the vocabularies from the **training split's** raw values of each categorical column
    (``categorical`` maps the column to those values, empty cells included):
    :func:`fit_encoding_from_counts` of their counts."""
    return fit_encoding_from_counts(columns, {column: Counter(values) for column, values in categorical.items()}, impute, dropped)


def fit_encoding_from_counts(columns: list[str], counts: dict[str, Counter], impute: bool, dropped=(), date_columns=None) -> TableEncoding:
    """Learn the vocabularies from how often each raw value occurs in the **training split** of
    each categorical column (``counts``; an empty cell counts under ``None``): values sorted by
    frequency, then by name, at most :data:`MAX_VOCABULARY` of them. ``date_columns``: the columns that
    hold ISO 8601 dates, as the CSV loader decided on the whole file (``None``: decided here, on
    these counts), which become calendar columns instead."""
    vocabularies, fill, indicators, dates = {}, {}, [], {}
    for column in columns:
        if column not in counts:
            continue
        present, empty = Counter(), 0
        for value, n in counts[column].items():
            if is_missing(value):
                empty += n
            else:
                present[str(value).strip()] += n
        dated = [value for value in present if not is_missing_mark(value)]  # NA in a date column is a gap
        if (column in date_columns) if date_columns is not None else is_date_column(dated):  # calendar columns (dlagent.ml.dates)
            dates[column] = has_time_of_day(dated)
            if impute and (empty or len(dated) < len(present)):
                indicators.append(column)
            continue
        if impute and empty:
            indicators.append(column)
        ranked = sorted(present, key=lambda value: (-present[value], value))
        vocabularies[column] = sorted(ranked[:MAX_VOCABULARY])
        if ranked:
            fill[column] = ranked[0]
    return TableEncoding(list(columns), vocabularies, fill, indicators, impute, list(dropped), dates)
