"""Where data comes from: a data set's name (``scheme:argument``) and the data roots a path must
stay inside.

Every file a loader opens goes through :func:`check_inside_roots`, with symbolic links resolved
first, so a name typed into a trigger form cannot read a file outside ``DLAGENT_DATA_ROOTS``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dlagent.errors import ConfigError

SCHEMES = ("digits", "mnist-idx", "npz", "csv", "images")


def parse_dataset_uri(uri: str) -> tuple[str, str]:
    """Split ``scheme:argument`` and check the scheme; the argument is checked by its loader."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("dataset", f"must be a non-empty string, got {uri!r}.", _dataset_fix())
    uri = uri.strip()
    scheme, _, argument = uri.partition(":")
    if scheme not in SCHEMES:
        raise ConfigError("dataset", f"unknown data set {uri!r}.", _dataset_fix())
    if scheme == "digits":
        if argument:
            raise ConfigError("dataset", f"'digits' takes no argument, got {uri!r}.", "use 'digits'.")
    elif not argument:
        raise ConfigError("dataset", f"{scheme!r} needs a path, got {uri!r}.", f"use '{scheme}:<path>'.")
    return scheme, argument


def _dataset_fix() -> str:
    return "use one of 'digits', 'mnist-idx:<dir>', 'npz:<file>', 'csv:<file>', 'images:<dir>'."


def resolve_data_path(argument: str, *, allowed_roots: list[str] | None = None, field_name="dataset") -> Path:
    """Resolve a user path; refuse a missing path and, when roots are given, one outside them.

    Symbolic links are resolved before the check, so a link cannot lead outside a root.
    """
    path = Path(os.path.expanduser(argument)).resolve()
    check_inside_roots(path, allowed_roots, argument=argument, field_name=field_name)
    if not path.exists():
        raise ConfigError(field_name, f"path {argument!r} does not exist.", "check the path, relative to the working directory.")
    return path


def check_inside_roots(path: Path, allowed_roots: list[str] | None, *, argument=None, field_name="dataset") -> Path:
    """Refuse ``path`` (resolved: symbolic links followed) when it is outside every allowed root.

    Used for the data set path itself and for every file a loader opens inside a folder, so
    a symbolic link inside a data root cannot lead to a file outside the roots.
    """
    if not allowed_roots:
        return path
    resolved = Path(path).resolve()
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    if not any(resolved == root or root in resolved.parents for root in roots):
        given = str(path) if argument is None else argument
        raise ConfigError(
            field_name,
            f"path {given!r} resolves to {str(resolved)!r}, outside the allowed data roots {[str(r) for r in roots]}; "
            "it was not opened.",
            "put the data under one of those roots, or add the folder to DLAGENT_DATA_ROOTS (os.pathsep-separated).",
        )
    return resolved
