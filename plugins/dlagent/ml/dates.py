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

import functools
import math
import re
from collections.abc import Iterable
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


def date_features(moment: datetime | None, with_time: bool) -> list[float]:
    """The columns :func:`date_feature_names` names, for ``moment``; all NaN for an empty cell
    (``None``), which the model's imputation fills under ``missing: impute``."""
    if moment is None:
        return [math.nan] * date_width(with_time)
    days = _days_since_1970(moment)
    moment = moment.replace(tzinfo=None)  # the calendar as written: its own day, weekday and hour
    into_day = (moment - datetime(moment.year, moment.month, moment.day)).total_seconds() / _DAY_SECONDS
    year_days = 366 if moment.year % 4 == 0 and (moment.year % 100 != 0 or moment.year % 400 == 0) else 365
    season = 2 * math.pi * (moment.timetuple().tm_yday - 1 + into_day) / year_days
    weekday = [0.0] * len(WEEKDAYS)
    weekday[moment.weekday()] = 1.0
    features = [days, math.sin(season), math.cos(season), *weekday]
    if with_time:  # on a circle for what changes smoothly through the day, one-hot for hours that differ (rush hours)
        hour = [0.0] * 24
        hour[moment.hour] = 1.0
        features += [math.sin(2 * math.pi * into_day), math.cos(2 * math.pi * into_day), *hour]
    return features


@functools.lru_cache(maxsize=8)
def date_table(texts: tuple[str, ...], with_time: bool) -> tuple[np.ndarray, np.ndarray]:
    """For a date column's distinct texts (the CSV loader's codes index them): each one's features
    as float32 rows, plus a last row of NaN for an empty cell, and each one's kind (:data:`DATE`,
    :data:`GAP`, :data:`NOT_A_DATE`). Cached: a streamed table encodes every chunk it reads with
    the same texts, so each is parsed once, not once per chunk."""
    moments = [parse_iso_date(text) for text in texts]
    kinds = np.array([DATE if m is not None else GAP if is_missing_mark(text.strip()) else NOT_A_DATE
                      for text, m in zip(texts, moments, strict=True)], np.int8)
    table = np.array([date_features(m, with_time) for m in moments] + [date_features(None, with_time)], np.float32)
    return table, kinds
