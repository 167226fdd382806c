"""One error type for bad input from a person, so every layer reports it the same way."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-supplied value is invalid.

    The message always names the field, the value that was given and how to fix it, because
    the person reading it is in the Airflow UI or a task log, not in our source code.
    """

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)
