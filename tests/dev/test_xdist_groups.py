"""``make test`` runs the suite on pytest-xdist workers (three, ``--dist loadgroup``); every test that
uses PostgreSQL or the live services must run on the same worker as the others of its group, one
after another, because the live pipeline run restarts PostgreSQL on purpose
(tests/conftest.py: ``pytest_collection_modifyitems``).

A small suite runs in a subprocess with the suite's grouping hook: in two files, service tests
(through ``postgres_url``, through a fixture that uses it, by the ``postgres`` marker) take turns
with plain tests; a third file marks its tests ``xdist_group`` (as a module whose module-scoped
fixture trains a model does, so it trains once); each test writes the worker it ran on.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_DIR

CONFTEST = '''
import pytest
from tests.conftest import pytest_collection_modifyitems  # noqa: F401 - the grouping under test

@pytest.fixture
def postgres_url():
    return "postgresql://unused"

@pytest.fixture
def world(postgres_url):
    return postgres_url
'''

TESTS = '''
import os, time
from pathlib import Path
import pytest

def record(name):
    Path(os.environ["RAN_ON_DIR"], name).write_text(os.environ.get("PYTEST_XDIST_WORKER", "none"))

{tests}
'''


SERVICE_KINDS = {"fixture": "postgres_url", "indirect": "world", "marker": None}  # how a test needs the services


def _module(prefix: str) -> str:
    """Plain tests and service tests taking turns: spread as xdist spreads by default, the
    service tests would land on both workers."""
    tests = []
    for i, kind in enumerate([*SERVICE_KINDS, *SERVICE_KINDS]):
        fixture = SERVICE_KINDS[kind]
        mark = "@pytest.mark.postgres\n" if fixture is None else ""
        tests.append(f"def test_{prefix}_plain_{i}():\n    time.sleep(0.2)\n    record('{prefix}_plain_{i}')\n")
        tests.append(f"{mark}def test_{prefix}_service_{i}({fixture or ''}):\n    time.sleep(0.2)\n    record('{prefix}_service_{i}')\n")
    return TESTS.format(tests="\n".join(tests))


def test_every_service_test_runs_on_one_worker_and_the_rest_spread(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_a.py").write_text(_module("a"))
    (suite / "test_b.py").write_text(_module("b"))
    # a module that keeps its tests on one worker (its module-scoped fixture trains once)
    grouped = "\n".join(f"def test_grouped_{i}():\n    time.sleep(0.2)\n    record('grouped_{i}')\n" for i in range(6))
    (suite / "test_c.py").write_text(TESTS.format(tests='pytestmark = pytest.mark.xdist_group("c")\n\n' + grouped))
    ran_on = tmp_path / "ran_on"
    ran_on.mkdir()
    out = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q",
                          "-o", "markers=postgres: test", "--rootdir", str(suite), str(suite)],
                         cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAN_ON_DIR": str(ran_on), "PYTHONPATH": str(PROJECT_DIR)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    workers = {path.name: path.read_text() for path in ran_on.iterdir()}
    assert len(workers) == 30
    services = {worker for name, worker in workers.items() if "_service_" in name}
    assert len(services) == 1 and services != {"none"}, workers
    assert len({worker for name, worker in workers.items() if name.startswith("grouped_")}) == 1, workers
    assert set(workers.values()) == {"gw0", "gw1"}  # the plain tests used both workers
