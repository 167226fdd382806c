"""A table column of ISO 8601 dates becomes numbers a model can learn from.

One-hot, a date is a category that no later row brings (tomorrow is a new value), so a model
learns nothing from it that carries over. What carries over is where the date sits on the
calendar: its trend (days since 1970), its season (day of the year, on a circle so that
31 December sits beside 1 January), its day of the week (one-hot: weekends differ), and, for
timestamps that have one, its time of day (on a circle). :class:`dlagent.ml.tabular.TableEncoding`
turns such a column into these columns, the same way for training, evaluation and serving.

Only ISO 8601 is read (``2024-03-01``, ``2024-03-01T14:30``, ``2024-03-01 14:30:00+02:00``):
``01/03/2024`` is the 1st of March in Europe and the 3rd of January in the US, and a guess
would be a silent error (such a column is refused with that fix, :mod:`dlagent.ml.data_checks`).
A timestamp with a UTC offset is taken in UTC; one without is taken as written.

Pure Python and NumPy: no Keras, no Airflow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime

ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EPOCH = datetime(1970, 1, 1)
_DAY_SECONDS = 86400.0


def parse_iso_date(value) -> datetime | None:
    """``value`` (a cell's text) as a naive datetime (UTC when it carried an offset), or ``None``
    when it is not an ISO 8601 date or timestamp."""
    text = str(value).strip()
    if not ISO_DATE.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:  # 2024-02-30, 25:00
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


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
    return any((moment := parse_iso_date(value)) is not None and moment != datetime(moment.year, moment.month, moment.day)
               for value in values)


def date_feature_names(column: str, with_time: bool) -> list[str]:
    names = [f"{column}:days_since_1970", f"{column}:day_of_year_sin", f"{column}:day_of_year_cos"]
    names += [f"{column}:weekday={day}" for day in WEEKDAYS]
    if with_time:
        names += [f"{column}:time_of_day_sin", f"{column}:time_of_day_cos"]
    return names


def date_width(with_time: bool) -> int:
    return 3 + len(WEEKDAYS) + (2 if with_time else 0)


def date_features(moment: datetime | None, with_time: bool) -> list[float]:
    """The columns :func:`date_feature_names` names, for ``moment``; all NaN for an empty cell
    (``None``), which the model's imputation fills under ``missing: impute``."""
    if moment is None:
        return [math.nan] * date_width(with_time)
    seconds = (moment - _EPOCH).total_seconds()
    into_day = (moment - datetime(moment.year, moment.month, moment.day)).total_seconds() / _DAY_SECONDS
    year_days = 366 if moment.year % 4 == 0 and (moment.year % 100 != 0 or moment.year % 400 == 0) else 365
    season = 2 * math.pi * (moment.timetuple().tm_yday - 1 + into_day) / year_days
    weekday = [0.0] * len(WEEKDAYS)
    weekday[moment.weekday()] = 1.0
    features = [seconds / _DAY_SECONDS, math.sin(season), math.cos(season), *weekday]
    if with_time:
        features += [math.sin(2 * math.pi * into_day), math.cos(2 * math.pi * into_day)]
    return features
