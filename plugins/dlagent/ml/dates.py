"""A table column of ISO 8601 dates becomes numbers a model can learn from.

One-hot, a date is a category that no later row brings (tomorrow is a new value), so a model
learns nothing from it that carries over. What carries over is where the date sits on the
calendar: its trend (days since 1970), its season (day of the year, on a circle so that
31 December sits beside 1 January), its day of the week (one-hot: weekends differ), and, for
timestamps that have one, its time of day (on a circle, and the hour one-hot: a rush hour is a
window, which a small network finds far sooner in 24 columns than in a sine and a cosine). :class:`dlagent.ml.tabular.TableEncoding`
turns such a column into these columns, the same way for training, evaluation and serving.

Only ISO 8601 is read (``2024-03-01``, ``2024-03-01T14:30``, ``2024-03-01 14:30:00+02:00``):
``01/03/2024`` is the 1st of March in Europe and the 3rd of January in the US, and a guess
would be a silent error (such a column is refused with that fix, :mod:`dlagent.ml.data_checks`).
The calendar columns read the date and time as written (a shop's Saturday 00:30 at +09:00 is
its Saturday, not Friday in UTC); the trend is counted in UTC when an offset is given.

Pure Python and NumPy: no Keras, no Airflow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from dlagent.ml.data_checks import is_missing_mark

ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EPOCH = datetime(1970, 1, 1)
_DAY_SECONDS = 86400.0
DATE, GAP, NOT_A_DATE = 0, 1, 2  # what a date column's text is (date_table): a missing-value mark such as NA is a gap


def parse_iso_date(value) -> datetime | None:
    """``value`` (a cell's text) as a datetime (aware when it carried an offset), or ``None`` when
    it is not an ISO 8601 date or timestamp."""
    text = str(value).strip()
    if not ISO_DATE.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
        _days_since_1970(moment)  # 0001-01-01T00:00+01:00 is before the first representable UTC moment
    except (ValueError, OverflowError):  # 2024-02-30, 25:00
        return None
    return moment


def _days_since_1970(moment: datetime) -> float:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - _EPOCH).total_seconds() / _DAY_SECONDS


def is_date_column(values: Iterable) -> bool:
    """Whether every one of ``values`` (a column's non-empty texts; at least one) is an ISO 8601 date."""
    seen = False
    for value in values:
        if parse_iso_date(value) is None:
            return False
        seen = True
    return seen


def has_time_of_day(values: Iterable) -> bool:
    """Whether any of ``values`` (ISO dates) is at another time than midnight: only then does the
    column get time-of-day columns (a constant column teaches nothing)."""
    return any((moment := parse_iso_date(value)) is not None and moment.time() != datetime.min.time() for value in values)


def date_feature_names(column: str, with_time: bool) -> list[str]:
    names = [f"{column}:days_since_1970", f"{column}:day_of_year_sin", f"{column}:day_of_year_cos"]
    names += [f"{column}:weekday={day}" for day in WEEKDAYS]
    if with_time:
        names += [f"{column}:time_of_day_sin", f"{column}:time_of_day_cos"] + [f"{column}:hour={h:02d}" for h in range(24)]
    return names


def date_width(with_time: bool) -> int:
    return 3 + len(WEEKDAYS) + (2 + 24 if with_time else 0)


@dataclass(frozen=True)
class ParsedDates:
    """Distinct date texts (a CSV column's, which the loader's codes index) parsed once, kept as a few
    numbers each (27 bytes, not the 36 float32 columns): :func:`date_columns` makes the columns of
    a chunk's rows from them. ``kinds``: :data:`DATE`, :data:`GAP` (a mark such as NA) or :data:`NOT_A_DATE`."""

    days: np.ndarray  # since 1970-01-01 00:00 UTC (float64)
    season: np.ndarray  # the day of the year (and its fraction) as an angle
    into_day: np.ndarray  # the fraction of the day gone, as written
    weekday: np.ndarray  # 0 Monday .. 6 Sunday, as written (int8)
    hour: np.ndarray  # 0 .. 23, as written (int8)
    kinds: np.ndarray  # int8

    @classmethod
    def of(cls, values: Iterable) -> ParsedDates:
        """``values``: texts (or ``datetime`` objects, or ``None`` for an empty cell)."""
        fields, kinds = [], []
        for value in values:
            moment = value if isinstance(value, datetime) else None if value is None else parse_iso_date(value)
            if moment is None:
                kinds.append(GAP if value is None or is_missing_mark(str(value).strip()) else NOT_A_DATE)
                fields.append((math.nan, math.nan, math.nan, 0, 0))
                continue
            kinds.append(DATE)
            days = _days_since_1970(moment)
            moment = moment.replace(tzinfo=None)  # the calendar as written: its own day, weekday and hour
            into_day = (moment - datetime(moment.year, moment.month, moment.day)).total_seconds() / _DAY_SECONDS
            year_days = 366 if moment.year % 4 == 0 and (moment.year % 100 != 0 or moment.year % 400 == 0) else 365
            fields.append((days, 2 * math.pi * (moment.timetuple().tm_yday - 1 + into_day) / year_days, into_day,
                           moment.weekday(), moment.hour))
        table = np.array(fields, np.float64).reshape(-1, 5)
        return cls(table[:, 0], table[:, 1], table[:, 2], table[:, 3].astype(np.int8), table[:, 4].astype(np.int8),
                   np.array(kinds, np.int8))


def date_columns(parsed: ParsedDates, codes: np.ndarray, with_time: bool) -> np.ndarray:
    """The columns :func:`date_feature_names` names, float32 ``(len(codes), width)``, for the rows whose
    values are ``parsed``'s entries ``codes`` (``-1``, or a value that is not a date: a row of NaN, a
    gap the model's imputation fills under ``missing: impute``). The one computation of the features:
    a raw row at serving time goes through it as a chunk of the loader does (:func:`date_features`)."""
    codes = np.asarray(codes, np.int64)
    known = codes >= 0
    known[known] = parsed.kinds[codes[known]] == DATE
    at = np.where(known, codes, 0)
    out = np.full((len(codes), date_width(with_time)), np.nan, np.float32)
    if not len(parsed.kinds):
        return out
    season, rows = parsed.season[at], np.flatnonzero(known)
    block = [parsed.days[at], np.sin(season), np.cos(season)] + [(parsed.weekday[at] == d).astype(np.float64) for d in range(7)]
    if with_time:  # on a circle for what changes smoothly through the day, one-hot for hours that differ (rush hours)
        turn = 2 * np.pi * parsed.into_day[at]
        block += [np.sin(turn), np.cos(turn)] + [(parsed.hour[at] == h).astype(np.float64) for h in range(24)]
    out[rows] = np.stack(block, axis=1)[rows].astype(np.float32)
    return out


def date_features(moment: datetime | None, with_time: bool) -> list[float]:
    """:func:`date_columns` for one moment (``None``: an empty cell, all NaN)."""
    return date_columns(ParsedDates.of([moment]), np.zeros(1, np.int64), with_time)[0].tolist()
