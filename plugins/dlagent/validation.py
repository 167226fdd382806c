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


# --------------------------------------------------------------------------- bounds declared once
#
# A settings dataclass declares each field's limits once, as field metadata (``bounded(...)``).
# The dataclass checks itself with them (:func:`check_fields`), the trigger form's Params are
# generated from them (``dlagent.params``), and the plan, policy and tuning validators read the
# same numbers (:func:`field_bounds`), so no two places can disagree on a limit.

BOUNDS_KEY = "dlagent.bounds"
KINDS = ("int", "number", "choice", "bool", "str", "object")
MAX_OBJECT_KEYS = 64  # an ``object`` setting (e.g. ``model_args``): a handful of named values, not a data file


class Bounds:
    """The limits of one setting: its kind, range or choices, and the words of the trigger form."""

    __slots__ = ("kind", "low", "high", "low_open", "high_open", "choices", "optional", "title", "description", "fix", "pattern",
                 "examples")

    def __init__(self, kind: str, *, low=None, high=None, low_open: bool = False, high_open: bool = False, choices=None,
                 optional: bool = False, title: str | None = None, description: str | None = None, fix: str | None = None,
                 pattern: str | None = None, examples=None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "number" and (low is None or high is None):
            raise ValueError("a number needs both low and high")
        if kind == "int" and low is None:
            raise ValueError("an int needs low")
        if kind == "choice" and not choices:
            raise ValueError("a choice needs choices")
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.choices = tuple(choices) if choices is not None else None
        self.optional, self.title, self.description, self.fix = optional, title, description, fix
        self.pattern = pattern  # a ``str``: the regular expression the whole value must match
        self.examples = tuple(examples) if examples is not None else None  # a ``str``: the form's suggestions

    def check(self, field: str, value):
        """Return ``value`` when it is within bounds, else raise :class:`ConfigError` naming ``field``."""
        if value is None and self.optional:
            return None
        if self.kind == "int":
            return check_int(field, value, low=self.low, high=self.high, optional=self.optional, fix=self.fix)
        if self.kind == "number":
            return check_number(field, value, low=self.low, high=self.high, low_open=self.low_open, high_open=self.high_open,
                                optional=self.optional, fix=self.fix)
        if self.kind == "choice":
            return check_choice(field, value, self.choices)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(field, f"must be true or false, got {value!r}.", self.fix or "give true or false.")
            return value
        if self.kind == "object":
            return check_json_object(field, value, fix=self.fix)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(field, f"must be a non-empty string, got {value!r}.", self.fix or "give a name.")
        if self.pattern is not None:
            import re

            if not re.fullmatch(self.pattern, value):
                raise ConfigError(field, f"{value!r} is not of the expected form.", self.fix or f"match {self.pattern}.")
        return value

    def json_schema(self) -> dict:
        """The JSON-schema keywords of this setting (what an Airflow ``Param`` validates)."""
        base = {"int": "integer", "number": "number", "choice": None, "bool": "boolean", "str": "string", "object": "object"}[self.kind]
        schema: dict = {}
        if self.kind == "choice":
            kinds = sorted({_json_type(c) for c in self.choices})
            base = kinds[0] if len(kinds) == 1 else kinds
            schema["enum"] = list(self.choices) + ([None] if self.optional else [])
        if self.kind in ("int", "number"):
            if self.low is not None:
                schema["exclusiveMinimum" if self.low_open else "minimum"] = self.low
            if self.high is not None:
                schema["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        if self.kind == "str":
            schema["minLength"] = 1
            if self.pattern is not None:
                schema["pattern"] = self.pattern
            if self.examples:
                schema["examples"] = list(self.examples)
        types = base if isinstance(base, list) else [base]
        schema["type"] = (["null", *types] if self.optional else (types[0] if len(types) == 1 else types))
        return schema


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def check_json_object(field: str, value, *, fix: str | None = None) -> dict:
    """A JSON object of named plain values: string keys (identifiers), values that are numbers,
    strings, booleans, null or lists of those (what a trigger form, an MLflow param and an Optuna
    trial can all carry)."""
    fix = fix or 'give e.g. {"width": 64, "activation": "relu"}.'
    if not isinstance(value, dict):
        raise ConfigError(field, f"must be a JSON object, got {type(value).__name__}.", fix)
    if len(value) > MAX_OBJECT_KEYS:
        raise ConfigError(field, f"has {len(value)} keys; at most {MAX_OBJECT_KEYS}.", fix)
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(field, f"key {key!r} is not a name (letters, digits and _, not starting with a digit).", fix)
        items = item if isinstance(item, list) else [item]
        for one in items:
            if one is not None and not isinstance(one, (bool, int, float, str)) or (isinstance(one, float) and not math.isfinite(one)):
                raise ConfigError(f"{field}.{key}", f"must be a number, string, boolean, null or a list of those, got {type(one).__name__}.", fix)
    return value


def bounded(default, kind: str, **bounds):
    """A dataclass field whose limits are declared once (see :class:`Bounds`).

    A mutable default (a dict or a list) becomes a factory of copies, as dataclasses require."""
    import copy
    import dataclasses

    metadata = {BOUNDS_KEY: Bounds(kind, **bounds)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_bounds(cls, name: str) -> Bounds:
    """The declared limits of field ``name`` of settings dataclass ``cls``."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name == name:
            if BOUNDS_KEY not in f.metadata:
                raise KeyError(f"{cls.__name__}.{name} declares no bounds")
            return f.metadata[BOUNDS_KEY]
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_default(cls, name: str):
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING else f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def check_fields(instance, prefix: str = "") -> None:
    """Check every bounded field of a settings dataclass instance (call it in ``__post_init__``)."""
    import dataclasses

    for f in dataclasses.fields(instance):
        bounds = f.metadata.get(BOUNDS_KEY)
        if bounds is not None:
            bounds.check(f"{prefix}{f.name}", getattr(instance, f.name))


def finite(value) -> bool:
    """A real, finite number (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (readable plan values: 0.003, not 0.0030000001)."""
    return float(f"{value:.{digits}g}")
