"""The checks every loaded data set goes through, whatever its format: features numeric and
finite (or NaN under ``missing: impute``), labels ``0..K-1`` with each class large enough for a
three-way split, regression targets finite and varying.

A target in the wrong task is refused with the real reason: class-like values under regression,
a count or a measured quantity under classification, each naming the data option that fixes it.
More a CSV's first pass applies (:mod:`dlagent.ml.csv_table`): ``drop_columns`` must name
header columns that are not labels; a column's kind is decided from its cells' counts
(:func:`categorical_column`), where a missing-value mark (``NA``) in a column of numbers is an
empty cell and numbers written for people (``$1,200``, ``12%``) are refused, not taken for words;
and a categorical column of nearly all different values is refused as an identifier.
"""

from __future__ import annotations

import math
import re

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.metrics import CLASSIFICATION, REGRESSION

MIN_SAMPLES_PER_CLASS = 3  # one each for train, validation and test
REGRESSION_LIKE_CLASSES = 20  # more distinct labels than this, most of them rare: a regression target, not classes
REGRESSION_FIX = "set the data option task to 'regression' (and metric to 'rmse', 'mae' or 'r2'), or give integer class labels 0..K-1."
CLASSIFICATION_FIX = "set the data option task to 'classification' (the default), or give a numeric target that varies."
MAX_CLASS_LIKE_VALUES = 10  # a regression target with at most this many distinct whole values looks like class labels
MIN_REGRESSION_SAMPLES = 10
# A categorical column whose first IDENTIFIER_WINDOW non-empty cells hold at least IDENTIFIER_SHARE
# different values is an identifier (a key, a name): one-hot, each value is a column of its own
# that no other row shares. A true category repeats: 5,000 values spread over a large table
# show about 905 different values in 1,000 cells (0.905), an identifier 1,000 (1.0).
IDENTIFIER_WINDOW = 1000
IDENTIFIER_SHARE = 0.95
IDENTIFIER_MIN_CELLS = 20  # fewer non-empty cells say nothing either way


# A cell that says "no value": the marks pandas reads as missing by default, and "?" (the UCI
# archive's). In a column of numbers it is an empty cell; in a categorical column it stays a
# value like any other ("None" may be a kind of heating, "NA" a country).
MISSING_MARKERS = frozenset({"na", "n/a", "nan", "-nan", "+nan", "null", "none", "#n/a", "#na", "<na>", "?"})
MARKER_LENGTH = max(map(len, MISSING_MARKERS))


def is_missing_mark(text: str) -> bool:
    """Whether a (stripped) cell is one of :data:`MISSING_MARKERS`, in any case; the length is
    looked at first, so a word costs no ``lower()``."""
    return len(text) <= MARKER_LENGTH and text.lower() in MISSING_MARKERS
# A number written for people: a currency or percent sign ($12, 12 €, 12%, (12.50 $)), or thousands
# separators in groups of three (1,234,567.5  1'234'567  1.234.567,5  (1,200): an accounting
# minus). Read as text, each value would be a category of its own and the model would never see
# its size. Not: 1,5 (one group of two), 1.234.567 without a decimal comma, 555 123 4567, an IP
# address: such columns are the person's to explain, and are judged as words.
GROUPED_NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})+(\.\d+)?|\d{1,3}('\d{3})+(\.\d+)?|\d{1,3}(\.\d{3})+,\d+)")
PLAIN_NUMBER = re.compile(r"[-+]?\d+([.,]\d+)?")
CURRENCY_SIGNS = "$€£¥"
FORMATTED_MAX_LENGTH = 40  # longer cells are words: the check stays cheap whatever a cell holds


def is_formatted_number(text: str) -> bool:
    """Whether a cell (stripped, and not a number) is a number written for people."""
    if len(text) > FORMATTED_MAX_LENGTH:
        return False
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    signed = text[:1] in ("-", "+")
    core = text[1:].lstrip() if signed else text
    marked = False
    if core[:1] and core[0] in CURRENCY_SIGNS:
        core, marked = core[1:].lstrip(), True
    elif core[-1:] and core[-1] in CURRENCY_SIGNS + "%":
        core, marked = core[:-1].rstrip(), True
    if signed:
        core = text[0] + core
    return bool(GROUPED_NUMBER.fullmatch(core) or (marked and PLAIN_NUMBER.fullmatch(core)))


EMPTY_CELL_FIX = ("fill it, or set the data option missing to 'impute' (the training split's median or most frequent value, "
                  "and a was-missing indicator column).")


FORMATTED_CATEGORIES = 20  # a column of formatted numbers with at most this many values is a set of categories ($5, $10, $20)


def categorical_column(where: str, column: int, present: int, numeric: int, marked: int, formatted: int, first_line: dict, missing: str,
                       *, distinct: int = 0) -> bool:
    """Whether a CSV column is categorical, from the counts of its non-empty cells (``present``):
    ``numeric`` numbers, ``marked`` missing-value marks, ``formatted`` numbers written for people
    (counted until the column's first word), and ``first_line`` (the first line of a ``"marker"``,
    ``"formatted"`` number and ``"word"``), ``distinct`` its different texts. ``where`` names the
    file, ``column`` is 1-based. Refused: a column of nothing but marks (as an empty one, under refuse), a mark
    under ``missing: refuse`` in a column of numbers (an empty cell by another name), a column of
    formatted numbers with more than :data:`FORMATTED_CATEGORIES` values (a few are categories, as
    they always were here), and a column of mostly numbers with a stray word (a typo, not a category)."""
    words = present - numeric - marked - formatted
    column = f"column {column}"
    if marked and marked == present:
        if missing == "impute":  # a column of gaps, as an empty one always was
            return False
        raise ConfigError("dataset", f"{where}: every cell of {column} is empty or a missing-value mark (such as NA): there is "
                          "nothing to learn from it.", "leave it out: name it in drop_columns, or remove it from the file.")
    if not words and not formatted and (numeric or not marked):
        if marked and missing != "impute":
            raise ConfigError("dataset", f"{where} line {first_line['marker']}, {column}: a missing-value mark (such as NA, N/A, "
                              "null, None or ?) in a column of numbers, an empty cell.", EMPTY_CELL_FIX)
        return False
    if formatted and not words and distinct > FORMATTED_CATEGORIES:
        raise ConfigError("dataset", f"{where} line {first_line['formatted']}, {column}: a number written with a currency sign, a "
                          "percent sign or thousands separators: as text each value would be a category of its own, and the "
                          f"model would never see how large it is ({distinct} values{'' if distinct <= 1000 else ' or more'}).",
                          "save the column as plain numbers (1234.5, a percentage as "
                          "12 or 0.12), or name it in drop_columns.")
    if numeric * 2 > present - marked:  # the first cell that is not a number: a word, or a formatted number among plain ones
        line = min(first_line.get(kind, math.inf) for kind in ("word", "formatted"))
        raise ConfigError("dataset", f"{where} line {line}, {column}: a feature that is not a number, in a column of "
                          "numbers.", "correct the cell (a column of mostly numbers is numeric; a categorical column holds mostly "
                          "non-numeric values).")
    return True


# A date or a time as a spreadsheet or a database writes it: 2024-03-01, 01/03/2024, 1.3.24, 2024-03-01T12:00
DATE_LIKE = re.compile(r"\s*(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?")
# What can only be a date, whatever else the column holds: a four-digit year, or a time (1.2.10 may be a version)
CLEAR_DATE = re.compile(r"\s*(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{4}|\d{1,2}[/.]\d{1,2}[/.]\d{2}[ T]\d{1,2}:\d{2})")


FREE_TEXT_WORDS = 5  # a cell of at least this many words is a sentence (a review, a note), not a name or a key


def refuse_marks_in_dates(where: str, column: int, marker_line: int | None, missing: str) -> None:
    """Under ``missing: refuse``, a missing-value mark (NA) in a column of ISO dates is an empty cell, refused at its line."""
    if marker_line is not None and missing != "impute":
        raise ConfigError("dataset", f"{where} line {marker_line}, column {column}: a missing-value mark (such as NA, N/A, null, "
                          "None or ?) in a column of dates, an empty cell.", EMPTY_CELL_FIX)


def refuse_stray_in_dates(where: str, column: int, line: int | None, values) -> None:
    """Refuse a column of ISO 8601 dates but for a few cells (``values``: its distinct texts, or some of
    them), at ``line``, the first cell that is not one (a typo, or a placeholder such as 0000-00-00)."""
    if line is None or not values:
        return
    from dlagent.ml.dates import parse_iso_date

    if sum(parse_iso_date(v) is not None for v in values) >= IDENTIFIER_SHARE * len(values):
        raise ConfigError("dataset", f"{where} line {line}, column {column}: not an ISO 8601 date, in a column of dates.",
                          "write it as 2024-03-01 (or 2024-03-01T14:30:00), or leave the cell empty for an unknown date "
                          "(with the data option missing 'impute').")


def refuse_unreadable_dates(path, column: int, values, pattern: re.Pattern = CLEAR_DATE) -> None:
    """Refuse categorical column ``column`` (1-based) of the CSV at ``path`` when nearly all of ``values``
    (its distinct texts, or some of them) match ``pattern``, dates or times, but are not all ISO 8601
    (which become calendar columns, :mod:`dlagent.ml.dates`): ``01/03/2024`` is March in Europe and
    January in the US, and as a category each date is a value no later row brings. A column of
    nearly all different values is judged by the looser :data:`DATE_LIKE` (:func:`refuse_identifier`)."""
    if values and sum(bool(pattern.match(v)) for v in values) >= IDENTIFIER_SHARE * len(values):
        raise ConfigError("dataset", f"{str(path)!r} column {column}: dates or times not all written as ISO 8601, so their "
                          "day and month cannot be told apart, and as categories each is a value no later row brings.",
                          "write them as 2024-03-01 (or 2024-03-01T14:30:00), which become day-of-week, season and trend "
                          "columns, with an empty cell for an unknown date; or leave the column out: name it in drop_columns.")


def refuse_identifier(path, column: int, cells: int, distinct: int, values=()) -> None:
    """Refuse categorical column ``column`` (1-based) of the CSV at ``path`` when its first
    ``min(cells, IDENTIFIER_WINDOW)`` non-empty cells hold ``distinct`` values, nearly one each.
    When ``values`` (its distinct texts, or some of them) look like dates, the fix says to write them
    as ISO 8601; when most are sentences, that the models do not read free text. The message names the column by position and quotes no
    value: the header and the cells are content (:mod:`dlagent.ml.csv_table`)."""
    window = min(cells, IDENTIFIER_WINDOW)
    if window < IDENTIFIER_MIN_CELLS or distinct < IDENTIFIER_SHARE * window:
        return
    refuse_unreadable_dates(path, column, values, DATE_LIKE)
    where = f"{str(path)!r} column {column}: {distinct} different values in its first {window} non-empty cells"
    if values and sum(len(v.split()) >= FREE_TEXT_WORDS for v in values) * 2 >= len(values):
        raise ConfigError("dataset", f"{where}, free text (most of them {FREE_TEXT_WORDS} words or more): as a category each is a "
                          "value no later row brings, and the models read numbers, categories and images, not language.",
                          "leave it out: name it in drop_columns; what matters in it can be columns of its own (its length, or a "
                          "label another tool derived from it, such as a topic or a sentiment).")
    raise ConfigError("dataset", f"{where}, an identifier (a key, a name, an e-mail address), not a category: every new row would "
                      "bring a value the model never saw, and its one-hot columns would only let it memorise the training rows.",
                      "leave the column out: name it in drop_columns (several: 'id,email'), or remove it from the file.")


def column_positions(where: str, header: list[str], label_names: list[str], drop_columns) -> tuple[list, list, list]:
    """The header positions of the labels, of ``drop_columns`` and of the features (the rest). A
    label must be a header column, and so must every dropped one; two features may not share a
    name (a served row's columns are found by name; a nameless one is judged on its cells,
    :func:`empty_column`). ``where`` names the file."""
    for name in label_names:
        if name not in header and header_is_data(header):
            raise ConfigError("label_column", f"{where} seems to have no header line: its first line holds only numbers, and "
                              f"none of them is {name!r} (the label column is found by its name).",
                              "add a first line naming the columns (e.g. 'f1,f2,label'); if the columns are named by numbers "
                              "(wavelengths, say), name the label column among them in label_column.")
        if name not in header:
            raise ConfigError("label_column", f"{where} has no column named {name!r} among its {len(header)} header columns.",
                              "name the label column in the label_column setting (the header is the file's first line; "
                              "several regression targets: 'a,b').")
    label_at = [header.index(name) for name in label_names]
    dropped_at = dropped_positions(where, header, drop_columns, label_names)
    feature_at = [i for i in range(len(header)) if i not in label_at and i not in dropped_at]
    no_feature_left(where, feature_at, bool(dropped_at))
    seen = {}
    for i in feature_at:  # never quoted: the header is content
        if header[i] in seen:
            raise ConfigError("dataset", f"{where}: columns {seen[header[i]] + 1} and {i + 1} of the header have the same name.",
                              "give every column its own name.")
        if header[i]:
            seen[header[i]] = i
    return label_at, dropped_at, feature_at


def header_is_data(header: list[str]) -> bool:
    """Whether a CSV's first line is a row of numbers rather than names: a file saved without
    its header (``np.savetxt``, ``to_csv(header=False)``), which pandas would read with its
    first row as names and that row lost."""
    cells = [cell.strip().replace(",", ".") for cell in header if cell.strip()]  # a decimal comma, in a semicolon file
    try:
        for cell in cells:
            float(cell)  # nan and inf too: a row of data, not names
    except ValueError:
        return False
    return bool(cells)


def no_feature_left(where: str, feature_at: list, dropped: bool = True) -> None:
    """Refuse a table with no feature column left: blamed on ``drop_columns`` when some were
    dropped, else on the data set (a file of nothing but its label column)."""
    if not feature_at and not dropped:
        raise ConfigError("dataset", f"{where} has no feature column: the label column is its only column.",
                          "add the columns the model should learn from.")
    if not feature_at:
        raise ConfigError("drop_columns", f"{where}: no feature column is left once the label and drop_columns are taken out.",
                          "leave at least one feature column in.")


def empty_column(where: str, column: int, name: str, present: int, first_empty: int | None, missing: str) -> bool:
    """Whether CSV column ``column`` (1-based) is left out, after the first pass counted its
    ``present`` non-empty cells and found its first empty one on line ``first_empty``: a column
    with neither a name nor a value is (a separator at the end of every line; pandas would read it
    as ``Unnamed: 3``, all NaN). Refused: values without a name (a served row could not name
    them); under ``missing: refuse`` a named column of empty cells (nothing to learn; most likely
    an export that lost it), and an empty cell, at its line. Under ``impute`` an empty column is
    a feature of gaps, as it always was."""
    if not name:
        if present:
            raise ConfigError("dataset", f"{where}: column {column} has values but no name in the header line.",
                              "give it a name in the file's first line (a served row names its columns), or remove it.")
        return True
    if not present and first_empty and missing != "impute":  # under impute: imputed, as it always was
        raise ConfigError("dataset", f"{where}: every cell of column {column} is empty: there is nothing to learn from it.",
                          "leave it out: name it in drop_columns, or remove it from the file.")
    if first_empty and missing != "impute":
        raise ConfigError("dataset", f"{where} line {first_empty}, column {column}: an empty cell.", EMPTY_CELL_FIX)
    return False


def dropped_positions(where: str, header: list[str], drop_columns, label_names: list[str]) -> list[int]:
    """The header positions of ``drop_columns``: each must be a header column and not a label
    (the names are the person's own, so a message may quote them; the header's others it may not)."""
    positions = []
    for name in drop_columns:
        if name not in header:
            raise ConfigError("drop_columns", f"{where} has no column named {name!r} among its {len(header)} header columns.",
                              "name columns of the file's first line, separated by commas ('id,email'), or leave it empty.")
        if name in label_names:
            raise ConfigError("drop_columns", f"{name!r} is the label column; a label cannot be left out.",
                              "take it out of drop_columns (or name another label_column).")
        positions.append(header.index(name))
    return positions


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
    return validate_labels(y, class_names)


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
    from dlagent.ml.streaming import is_streamed

    if is_streamed(x):  # a streamed table's values were checked as they were read (dlagent.ml.csv_table)
        return
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError("dataset", f"features have dtype {x.dtype}, not floating point.", "convert features to numbers.")
    if missing == "impute" and np.isnan(x).any() and x.ndim != 2:
        raise ConfigError("data_options.missing", f"'impute' fills missing values of tables; these samples have shape {x.shape[1:]}.",
                          "clean the images, or use missing 'refuse'.")
    bad = np.isinf(x) if missing == "impute" else ~np.isfinite(x)
    if bad.any():
        raise non_finite_features(int(bad.sum()), int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0][0]))


def non_finite_features(count: int, first: int) -> ConfigError:
    return ConfigError("dataset", f"{count} NaN/inf feature values (first in sample {first}).",
                       "clean the data, or set the data option missing to 'impute' (NaN only; inf is never imputed).")


def validate_labels(y: np.ndarray, class_names: list[str] | None) -> int:
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
