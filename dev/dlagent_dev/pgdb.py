"""Throw-away PostgreSQL databases for tests and benchmarks: created on demand, all dropped at the end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def bench_admin_url() -> str:
    """The PostgreSQL server the benchmarks create their databases on (``DLAGENT_BENCH_POSTGRES_URL``,
    default this machine's, user ``postgres``)."""
    return os.environ.get("DLAGENT_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def connect_admin(admin_url: str):
    """An autocommit connection to the server's maintenance database (``postgresql+psycopg2://`` or ``postgresql://``)."""
    import psycopg2

    conn = psycopg2.connect(admin_url.replace("+psycopg2", ""), connect_timeout=5)
    conn.autocommit = True
    return conn


@contextmanager
def throwaway_databases(admin_url: str, *, prefix: str = "dlagent_bench",
                        connect: Callable[[], object] | None = None) -> Iterator[Callable[[], str]]:
    """Yield ``make()``, which creates a fresh, empty database and returns its URL (same scheme
    as ``admin_url``). Every database made is dropped afterwards, from a fresh session (a test
    may have restarted the server meanwhile), even with clients still connected."""
    connect = connect or (lambda: connect_admin(admin_url))
    admin = connect()
    base = admin_url.rsplit("/", 1)[0]
    created: list[str] = []

    def make() -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{base}/{name}"

    try:
        yield make
    finally:
        admin.close()
        if created:
            admin = connect()
            with admin.cursor() as cur:
                for name in created:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
