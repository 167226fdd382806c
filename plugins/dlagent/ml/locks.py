"""Named locks shared by every worker of a deployment, held in the coordination database.

PostgreSQL (any machine): a session advisory lock keyed by the name. SQLite (one machine):
an ``fcntl`` lock on a file beside the database. Used to count-then-ask Optuna trials and to
gate-then-promote in the Model Registry, which MLflow cannot do atomically by itself.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; ``None`` for an in-memory or ``file:`` URI database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


@contextlib.contextmanager
def named_lock(url: str, name: str, *, engine=None):
    """Hold the lock ``name`` in the database at ``url`` (a SQLAlchemy URL) for the block.

    ``engine`` reuses an existing SQLAlchemy engine for ``url``. Other databases get no lock
    (the caller documents what that costs).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        owned = engine is None
        engine = engine or create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
        finally:
            if owned:
                engine.dispose()
        return
    path = sqlite_path(url) if backend == "sqlite" else None
    if path is None:
        yield
        return
    import fcntl

    safe = hashlib.sha256(name.encode()).hexdigest()[:16]
    with open(path.with_name(f"{path.name}.{safe}.dlagent-lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
