"""A CSV column of ISO 8601 dates becomes calendar columns (trend, season, weekday, time of day),
the same in training, evaluation and serving; a model learns a weekday effect from it, which
the one-hot encoding of each date (what such a column got before) could not carry to new days."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.dates import date_features, parse_iso_date


@pytest.mark.parametrize("text, expected", [
    ("2024-03-01", datetime(2024, 3, 1)),
    (" 2024-03-01T14:30 ", datetime(2024, 3, 1, 14, 30)),
    ("2024-03-01 14:30:05.25", datetime(2024, 3, 1, 14, 30, 5, 250000)),
    ("2024-03-01T14:30:00.123456789", datetime(2024, 3, 1, 14, 30, 0, 123456)),  # nanoseconds, as NumPy writes them
    ("2024-03-01T01:30:00+02:00", datetime(2024, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))),
    ("2024-03-01T14:30:00Z", datetime(2024, 3, 1, 14, 30, tzinfo=UTC)),
    ("0001-01-01T00:00+01:00", None),  # before the first moment UTC can hold
    ("2024-02-30", None), ("01/03/2024", None), ("2024", None), ("20240301", None), ("2024-03-01 noon", None), ("", None),
])
def test_only_iso_8601_dates_and_timestamps_are_read(text, expected):
    assert parse_iso_date(text) == expected


def test_the_calendar_columns_of_a_date():
    monday = date_features(datetime(2026, 12, 7), with_time=False)
    assert len(monday) == 10 and monday[0] == (date(2026, 12, 7) - date(1970, 1, 1)).days
    assert monday[3:] == [1, 0, 0, 0, 0, 0, 0]  # weekday one-hot: a Monday
    new_year, new_years_eve = date_features(datetime(2025, 1, 1), False), date_features(datetime(2024, 12, 31), False)
    assert new_year[1:3] == [0.0, 1.0] and math.dist(new_year[1:3], new_years_eve[1:3]) < 0.02  # the season is a circle
    evening = date_features(datetime(2026, 12, 7, 18), with_time=True)
    assert len(evening) == 36 and evening[10:12] == pytest.approx([-1.0, 0.0], abs=1e-9)  # 18:00, three quarters round the day
    assert evening[12:] == [1.0 if hour == 18 else 0.0 for hour in range(24)]  # and the hour one-hot
    assert all(math.isnan(v) for v in date_features(None, True))  # an empty cell: a gap the model's imputation fills
    # with an offset: the trend in UTC, the calendar as written (a shop's Saturday 00:30 at +02:00 is its Saturday)
    saturday = date_features(parse_iso_date("2024-03-02T00:30+02:00"), with_time=True)
    assert saturday[0] == (date(2024, 3, 1) - date(1970, 1, 1)).days + 22.5 / 24 and saturday[3:10] == [0, 0, 0, 0, 0, 1, 0]
    assert saturday[10:] == pytest.approx(date_features(datetime(2024, 3, 2, 0, 30), True)[10:]) and saturday[12] == 1.0


def _write_visits(path, rows: int, *, day=lambda i: (date(2023, 1, 2) + timedelta(days=i)).isoformat(), seed: int = 0):
    """A visitor count that is 40 higher on weekends, plus a temperature effect and noise."""
    rng = np.random.default_rng(seed)
    lines = ["day,temperature,visitors"]
    for i in range(rows):
        weekday = (date(2023, 1, 2) + timedelta(days=i)).weekday()  # 2023-01-02 is a Monday
        temperature = rng.normal(15, 6)
        lines.append(f"{day(i)},{temperature:.1f},{100 + 40 * (weekday >= 5) + 2 * temperature + rng.normal(0, 4):.1f}")
    path.write_text("\n".join(lines) + "\n")
    return f"csv:{path}"


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_a_column_of_iso_dates_all_different_is_read_as_calendar_columns_not_refused_as_an_identifier(tmp_path, cache):
    from dlagent.ml.data import load_dataset
    from dlagent.ml.tabular import TableEncoding

    splits = load_dataset(_write_visits(tmp_path / "visits.csv", 400), task="regression", label_column="visitors",
                          cache=cache, allowed_roots=[str(tmp_path)])
    encoding = splits.encoding
    assert encoding.dates == {"day": False} and encoding.vocabularies == {}
    assert encoding.feature_names()[:4] == ["day:days_since_1970", "day:day_of_year_sin", "day:day_of_year_cos", "day:weekday=Mon"]
    assert encoding.width == 11 and splits.input_shape == (11,)
    from dlagent.ml.table_rows import iter_chunks

    x_test = np.concatenate(list(iter_chunks(splits.x_test)))
    raw = list(splits.raw_x_test)
    np.testing.assert_array_equal(encoding.encode(raw), x_test)  # what a server computes for a raw row is what training saw
    served = TableEncoding.from_json(encoding.to_json())  # as the serving bundle carries it
    assert served == encoding and served.to_json()["dates"] == {"day": False}
    row = served.encode([{"day": "2026-12-12", "temperature": 20}])[0]  # a Saturday the model never saw
    assert row[0] == (date(2026, 12, 12) - date(1970, 1, 1)).days and row[3:10].tolist() == [0, 0, 0, 0, 0, 1, 0]
    with pytest.raises(ConfigError, match=r"row 0, column 'day': not an ISO 8601 date .* Fix: give a date as 2024-03-01"):
        served.encode([{"day": "12/12/2026", "temperature": 20}])
    with pytest.raises(ConfigError, match="row 0, column 'day': an empty value, and the model was trained with missing 'refuse'"):
        served.encode([{"day": "", "temperature": 20}])


def test_timestamps_get_time_of_day_columns_and_an_empty_date_is_imputed(tmp_path):
    from dlagent.ml.data import load_dataset

    path = tmp_path / "readings.csv"
    rows = [f"{'' if i % 10 == 3 else (datetime(2024, 5, 1) + timedelta(minutes=95 * i)).isoformat()},{i % 4},{i % 2}" for i in range(200)]
    path.write_text("\n".join(["at,level,label", *rows]) + "\n")
    splits = load_dataset(f"csv:{path}", missing="impute", allowed_roots=[str(tmp_path)])
    encoding = splits.encoding
    assert encoding.dates == {"at": True} and encoding.indicators == ["at"]
    assert encoding.feature_names()[10:13] == ["at:time_of_day_sin", "at:time_of_day_cos", "at:hour=00"]
    assert encoding.feature_names()[-1] == "at=<missing>" and encoding.width == 36 + 1 + 1  # the date, level, the date's was-missing flag
    row = encoding.encode([["", 2]])[0]
    assert np.isnan(row[:36]).all() and row[-1] == 1.0  # a gap the model fills, and its was-missing flag


@pytest.mark.parametrize("missing", ["refuse", "impute"])
def test_a_missing_value_mark_in_a_date_column_is_a_gap(tmp_path, missing):
    from dlagent.ml.data import load_dataset

    path = tmp_path / "visits.csv"
    rows = [f"{'NA' if i % 9 == 4 else (date(2024, 1, 1) + timedelta(days=i)).isoformat()},{i % 5},{'yes' if i % 3 else 'no'}"
            for i in range(300)]
    path.write_text("\n".join(["day,n,label", *rows]) + "\n")
    if missing == "refuse":  # refused by the first pass, at the mark's line (row 4: line 6)
        with pytest.raises(ConfigError, match=r"line 6, column 1: a missing-value mark \(such as NA.*in a column of dates"):
            load_dataset(f"csv:{path}", allowed_roots=[str(tmp_path)])
        return
    splits = load_dataset(f"csv:{path}", missing="impute", allowed_roots=[str(tmp_path)])
    assert splits.encoding.dates == {"day": False} and splits.encoding.indicators == ["day"]
    raw = list(splits.raw_x_test)
    gaps = [r for r, row in enumerate(raw) if row[0] == "NA"]
    assert gaps and np.isnan(splits.x_test[gaps, :10]).all() and (splits.x_test[gaps, -1] == 1).all()
    np.testing.assert_array_equal(splits.encoding.encode(raw), splits.x_test)


def test_what_only_looks_like_a_date_stays_a_category_and_a_late_stray_value_is_not_missed(tmp_path):
    """Versions (1.2.10) are categories; a column of 3,000 dates with one word at line 2,002, past the
    1,000 values the loader keeps per column, is refused at that line, not read as dates."""
    from dlagent.ml.data import load_dataset

    versions = tmp_path / "versions.csv"
    versions.write_text("\n".join(["version,n,label", *(f"{['1.2.10', '1.2.11', '2.0.10', '2.1.12'][i % 4]},{i % 7},{i % 2}"
                                                           for i in range(300))]) + "\n")
    assert load_dataset(f"csv:{versions}", allowed_roots=[str(tmp_path)]).encoding.vocabularies["version"] == ["1.2.10", "1.2.11", "2.0.10", "2.1.12"]
    stray = tmp_path / "stray.csv"
    days = [(datetime(2020, 1, 1) + timedelta(hours=7 * i)).isoformat() for i in range(3000)]
    days[2000] = "unknown"
    stray.write_text("\n".join(["at,n,label", *(f"{day},{i % 7},{i % 2}" for i, day in enumerate(days))]) + "\n")
    with pytest.raises(ConfigError, match="line 2002, column 1: not an ISO 8601 date, in a column of dates. Fix: write it as 2024-03-01"):
        load_dataset(f"csv:{stray}", allowed_roots=[str(tmp_path)])


def test_a_date_that_only_the_test_split_holds_badly_is_refused_naming_its_row(tmp_path):
    from dlagent.ml.tabular import fit_encoding

    encoding = fit_encoding(["day", "n"], {"day": ["2024-01-01", "2024-01-02"]}, impute=False)
    assert encoding.dates == {"day": False}
    x = np.array([[0, 1.0], [1, 2.0], [2, 3.0]], np.float32)  # codes into the file's distinct texts
    categories = {0: ["2024-01-01", "2024-01-02", "soon"]}
    assert encoding.encode_loaded(x[:2], categories).shape == (2, 11)  # a split without "soon" is fine
    with pytest.raises(ConfigError, match="row 2, column 'day': not an ISO 8601 date"):
        encoding.encode_loaded(x, categories)


def test_a_model_learns_the_weekend_from_a_date_column_that_one_hot_dates_could_not_carry(tmp_path):
    """The visitor count is 40 higher on weekends (noise 4). With the calendar columns an MLP's test
    RMSE is near the noise; with the date left out it cannot see the weekend (about 19)."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.data import load_dataset
    from dlagent.ml.training import evaluate, fit

    uri = _write_visits(tmp_path / "visits.csv", 700, seed=1)
    rmse = {}
    for drop in ("", "day"):
        splits = load_dataset(uri, task="regression", label_column="visitors", drop_columns=drop or None, seed=0,
                              allowed_roots=[str(tmp_path)])
        model = fit(splits, TrainConfig(model="mlp", epochs=60, learning_rate=0.01, seed=0)).model
        rmse[drop or "with dates"] = evaluate(model, splits)["test_rmse"]
    assert rmse["with dates"] < 8 < 15 < rmse["day"], rmse
