"""Checks for settings that arrive as JSON (Params, plans, thresholds): one wording everywhere.

Each check raises :class:`~dlagent.errors.ConfigError` naming the field (``epochs``,
``thresholds.max_size_bytes``, ``controller.patience``) with what was wrong and how to fix it,
and returns the value when it is fine. Booleans are never accepted as numbers.
"""

from __future__ import annotations

import math

from dlagent.errors import ConfigError


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    return ("(" if low_open else "[") + f"{_fmt(low)}, {_fmt(high)}" + (")" if high_open else "]")


def _fmt(bound) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_choice(field: str, value, choices):
    if value not in choices:
        raise ConfigError(field, f"must be one of {list(choices)}, got {value!r}.", f"pick one of {list(choices)}.")
    return value


def check_int(field: str, value, *, low: int, high: int | None = None, optional: bool = False, fix: str | None = None):
    """A whole number in ``[low, high]`` (``high`` ``None``: no upper bound); ``None`` when ``optional``."""
    if value is None and optional:
        return None
    bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
    fix = fix or f"give a whole number {bounds}{', or null' if optional else ''}."
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer{' or null' if optional else ''}, got {value!r} ({type(value).__name__}).", fix)
    if value < low or (high is not None and value > high):
        raise ConfigError(field, f"must be {bounds}, got {value}.", fix)
    return value


def check_number(field: str, value, *, low: float, high: float, low_open: bool = False, high_open: bool = False,
                 optional: bool = False, fix: str | None = None):
    """A finite number in the interval (open or closed at each end); ``None`` when ``optional``."""
    if value is None and optional:
        return None
    interval = _interval(low, high, low_open, high_open)
    fix = fix or f"give a value in {interval}{', or null' if optional else ''}."
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number{' or null' if optional else ''}, got {value!r} ({type(value).__name__}).", fix)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise ConfigError(field, f"must be in {interval}, got {value}.", fix)
    return value


def settings_from_dict(cls, values, *, section: str, prefix: str = "", what: str = "setting"):
    """Build the settings dataclass ``cls`` from a JSON object, refusing unknown keys by name.

    ``section`` names the whole object in errors (``train``, ``thresholds``); ``prefix`` is put
    before an unknown key's name (``thresholds.``); the dataclass validates the values itself.
    """
    import dataclasses

    if not isinstance(values, dict):
        raise ConfigError(section, f"must be a JSON object, got {type(values).__name__}.", f"pass a mapping of {what}s.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown {what} (known: {sorted(known)}).", "remove it or fix its spelling.")
    return cls(**values)
