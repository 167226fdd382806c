"""Identifier columns and ``drop_columns``: a categorical column whose values are nearly all
different (a key, a name) is refused before any split, by its position, until ``drop_columns``
leaves it out; a true category with many values is not; a dropped column is never read, the
encoding records it, and a served row that still carries it is scored as if it did not."""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.data import load_dataset
from dlagent.ml.data_checks import IDENTIFIER_WINDOW
from dlagent.ml.tabular import TableEncoding


def _write(path, rows: int, *, categories: int | None = None, seed: int = 0, prefix: str = "C"):
    """``rows`` customers: two numbers, a ``plan`` of 3 values, a ``key`` column (unique per row,
    or drawn from ``categories`` values) and a ``label`` that depends on the numbers only."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["key", "spend", "plan", "visits", "label"])
        for i in range(rows):
            spend, visits = rng.normal(50, 10), rng.normal(5, 2)
            key = f"{prefix}{i:06d}" if categories is None else f"v{rng.integers(0, categories)}"
            out.writerow([key, f"{spend:.3f}", ["basic", "plus", "pro"][i % 3], f"{visits:.3f}", "yes" if spend + 5 * visits > 75 else "no"])
    return f"csv:{path}"


def test_an_identifier_column_is_refused_by_its_position_before_any_split(tmp_path, monkeypatch):
    import dlagent.ml.data as data

    uri = _write(tmp_path / "customers.csv", rows=200)
    monkeypatch.setattr(data, "split_dataset", lambda *a, **k: pytest.fail("split before the refusal"))
    with pytest.raises(ConfigError) as refused:
        load_dataset(uri)
    message = str(refused.value)
    assert refused.value.field == "dataset" and "column 1: 200 different values in its first 200 non-empty cells" in message
    assert "identifier" in message and "drop_columns" in message
    assert "key" not in message.replace("(a key,", "") and "C000" not in message  # neither the header nor a cell is quoted


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_a_dropped_column_is_never_read_and_the_encoding_remembers_it(tmp_path, cache):
    uri = _write(tmp_path / "customers.csv", rows=300)
    splits = load_dataset(uri, drop_columns="key", cache=cache, seed=1)
    other_keys = load_dataset(_write(tmp_path / "other.csv", rows=300, prefix="D"), drop_columns=["key"], cache=cache, seed=1)
    encoding = splits.encoding
    assert encoding.columns == ["spend", "plan", "visits"] and encoding.dropped == ["key"]
    assert list(encoding.vocabularies) == ["plan"] and splits.input_shape == (6,)  # 2 numbers + 3 plans + out-of-vocabulary
    assert TableEncoding.from_json(encoding.to_json()) == encoding  # logged and loaded with the model
    assert splits.digest == other_keys.digest  # the key column's values were never read
    row = {"spend": 40.0, "plan": "pro", "visits": 3.0}
    np.testing.assert_array_equal(encoding.encode([{**row, "key": "C999999"}]), encoding.encode([row]))  # a record as the source has it
    with pytest.raises(ConfigError, match="unknown column 'email'"):
        encoding.encode([{**row, "email": "a@b.c"}])


def test_an_encoding_without_dropped_columns_is_the_document_it_always_was(tmp_path):
    splits = load_dataset(_write(tmp_path / "t.csv", rows=200, categories=3))
    doc = splits.encoding.to_json()
    assert "dropped" not in doc and TableEncoding.from_json(doc).dropped == []  # a champion logged before compares equal


def test_a_category_with_many_values_that_repeat_is_not_an_identifier(tmp_path):
    """400 values over 3,000 rows (a zip code, a product) are a category; 50,000 values over 3,000
    rows hardly ever repeat, and are refused."""
    loaded = load_dataset(_write(tmp_path / "zips.csv", rows=3000, categories=400))
    assert "key" in loaded.encoding.vocabularies and len(loaded.encoding.vocabularies["key"]) > 300
    assert IDENTIFIER_WINDOW == 1000  # the window below is the first 1,000 cells
    with pytest.raises(ConfigError, match="column 1: 9[0-9]{2} different values in its first 1000"):
        load_dataset(_write(tmp_path / "sparse.csv", rows=3000, categories=50_000))


@pytest.mark.parametrize(("options", "field", "says"), [
    ({"drop_columns": "email"}, "drop_columns", "no column named 'email' among its 5 header columns"),
    ({"drop_columns": "label"}, "drop_columns", "'label' is the label column"),
    ({"drop_columns": "key, key"}, "drop_columns", "names column 'key' twice"),
    ({"drop_columns": ["key", 3]}, "drop_columns", "must be column names"),
    ({"drop_columns": "key,spend,plan,visits"}, "drop_columns", "no feature column is left"),
])
def test_bad_drop_columns_are_refused_naming_the_field(tmp_path, options, field, says):
    uri = _write(tmp_path / "customers.csv", rows=60)
    with pytest.raises(ConfigError, match=says) as refused:
        load_dataset(uri, **options)
    assert refused.value.field == field


def test_drop_columns_on_data_without_columns_is_refused():
    with pytest.raises(ConfigError, match="leaves columns of a 'csv:' table out; this data set is 'digits'") as refused:
        load_dataset("digits", drop_columns="key")
    assert refused.value.field == "drop_columns"


@pytest.mark.parametrize("dates", [
    lambda i: (datetime(2024, 3, 1, 8) + timedelta(minutes=37 * i)).strftime("%d/%m/%Y %H:%M"),  # 01/03/2024 08:00, all different
    lambda i: (date(2024, 3, 1) + timedelta(days=i % 30)).strftime("%m/%d/%Y"),  # 03/01/2024, 30 days that repeat
])
def test_a_column_of_dates_not_in_iso_8601_is_refused_with_what_to_do_with_a_date(tmp_path, dates):
    """Day and month of 01/03/2024 cannot be told apart; ISO 8601 dates become calendar columns (tests/ml/test_dates.py)."""
    path = tmp_path / "visits.csv"
    rows = [f"{dates(i)},{i % 7},{'yes' if i % 3 else 'no'}" for i in range(400)]
    path.write_text("\n".join(["day,weekday,label", *rows]) + "\n")
    with pytest.raises(ConfigError, match="column 1: dates or times not all written as ISO 8601") as refused:
        load_dataset(f"csv:{path}")
    assert "2024-03-01" in str(refused.value) and "drop_columns" in str(refused.value) and "/2024" not in str(refused.value)
    assert load_dataset(f"csv:{path}", drop_columns="day").encoding.columns == ["weekday"]


def test_a_column_of_free_text_is_refused_as_text_not_as_an_identifier(tmp_path):
    """Reviews or notes, nearly all different, were refused as "an identifier (a key, a name, an
    e-mail address)": true of the cure (drop it), not of the column. The message says free text."""
    words = ["great", "slow", "delivery", "broke", "after", "a", "week", "would", "buy", "again", "never", "the", "box"]
    path = tmp_path / "reviews.csv"
    rows = [f"{' '.join(words[(i * k) % len(words)] for k in range(1, 6 + i % 4))} #{i},{i % 5},{'yes' if i % 3 else 'no'}"
            for i in range(300)]
    path.write_text("\n".join(["review,stars,label", *rows]) + "\n")
    with pytest.raises(ConfigError, match="column 1: 300 different values in its first 300 non-empty cells, free text") as refused:
        load_dataset(f"csv:{path}")
    assert "not language" in str(refused.value) and "drop_columns" in str(refused.value) and "delivery" not in str(refused.value)
    assert load_dataset(f"csv:{path}", drop_columns="review").encoding.columns == ["stars"]
    names = tmp_path / "names.csv"  # a name is a few words: still an identifier
    names.write_text("\n".join(["name,stars,label", *(f"Ann Lee {i},{i % 5},{'yes' if i % 3 else 'no'}" for i in range(300))]) + "\n")
    with pytest.raises(ConfigError, match="an identifier"):
        load_dataset(f"csv:{names}")
