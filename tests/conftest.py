"""Shared fixtures: an isolated dlagent home, real MLflow stores, real PostgreSQL databases.

Environment for Airflow is set before anything imports it, so the suite never touches a
person's own ~/airflow or .dlagent/. The session fails if it leaves a process running
(``dlagent_dev.pytest_guard``: the hooks imported below).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from dlagent_dev import leftovers as dev_leftovers
from dlagent_dev import procs as dev_procs
from dlagent_dev.pytest_guard import pytest_configure, pytest_sessionfinish  # noqa: F401 - the session's leftover check

PROJECT_DIR = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="dlagent-test-"))
os.environ["DLAGENT_HOME"] = str(_SESSION_HOME)
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_DIR / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_DIR / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_SESSION_HOME / 'airflow' / 'airflow.db'}"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("AIRFLOW_CONN_MLFLOW_DEFAULT", None)
(_SESSION_HOME / "airflow").mkdir(parents=True, exist_ok=True)

# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed: name the driver.
POSTGRES_ADMIN_URL = os.environ.get("DLAGENT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh MLflow tracking store (SQLite backend, local artifacts) for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DLAGENT_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri


def required_on_ci(message: str) -> None:
    """Skip on a developer's machine that lacks something, but fail on CI (``CI=true``), where
    .ci/run provides it (PostgreSQL, Chromium, ../shared/data): a required check never skips there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (required on CI)")
    pytest.skip(message)


#: Fixtures that use the PostgreSQL server or the live services. Under ``pytest -n 3`` (``make
#: test``) every test that uses one runs on the same worker, one after another (one xdist group):
#: the live pipeline run restarts PostgreSQL on purpose, which would break a PostgreSQL test
#: running at that moment on another worker; everything else spreads over the workers.
SERVICE_FIXTURES = frozenset({"postgres_databases", "module_postgres_databases", "session_postgres_databases", "postgres_url",
                              "live_stack", "live_pipeline_run"})
SERVICES_GROUP = "services"
#: Expensive session-scoped fixtures (a whole pipeline of operator runs): the tests that use one run
#: on one worker, so the fixture is built once, not once per worker.
FIXTURE_GROUPS = {"pipeline": "plugin_pipeline", "pipeline_env": "plugin_pipeline"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The xdist groups: the services group (above), the FIXTURE_GROUPS, and a module's own
    ``pytest.mark.xdist_group`` (a module whose module-scoped fixture trains a model keeps its tests
    on one worker, so the fixture trains once)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SERVICE_FIXTURES & fixtures or item.get_closest_marker("postgres"):
            group = SERVICES_GROUP
            item.add_marker(pytest.mark.xdist_group(group))
        elif shared := FIXTURE_GROUPS.keys() & fixtures:
            group = FIXTURE_GROUPS[min(shared)]
            item.add_marker(pytest.mark.xdist_group(group))
        elif marker := item.get_closest_marker("xdist_group"):
            group = marker.kwargs.get("name") or marker.args[0]
        else:
            continue
        if getattr(config.option, "loadgroup", False):
            _name_group_in_node_id(item, group)


def _name_group_in_node_id(item, group: str) -> None:
    """What pytest-xdist's ``--dist loadgroup`` does itself: its scheduler reads the group from
    the node id's ``@<group>`` suffix. xdist 3.8 writes ``item._nodeid``, which pytest 9 no longer
    reads (the id is ``item._id``), so without this every group would spread over the workers
    (tests/dev/test_xdist_groups.py checks that they do not)."""
    from _pytest.nodeid import NodeId

    if hasattr(item, "_id") and not item.nodeid.endswith(f"@{group}"):
        item._id = NodeId.parse(f"{item.nodeid}@{group}")


def _postgres_admin():
    import psycopg2
    from dlagent_dev.pgdb import connect_admin

    try:
        return connect_admin(POSTGRES_ADMIN_URL)
    except psycopg2.OperationalError as exc:
        message = (f"PostgreSQL is unreachable at {POSTGRES_ADMIN_URL}: {exc}. Start it "
                   "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) "
                   "or point DLAGENT_TEST_POSTGRES_URL at one.")
        required_on_ci(message)


def _database_factory():
    from dlagent_dev.pgdb import throwaway_databases

    return throwaway_databases(POSTGRES_ADMIN_URL, prefix="dlagent_test", connect=_postgres_admin)


@pytest.fixture
def postgres_databases():
    """Factory of fresh, empty PostgreSQL databases (URLs); all dropped after the test."""
    with _database_factory() as make:
        yield make


@pytest.fixture(scope="module")
def module_postgres_databases():
    """The same factory for a whole test module."""
    with _database_factory() as make:
        yield make


@pytest.fixture(scope="session")
def session_postgres_databases():
    """The same factory for the whole session (the live stack's stores)."""
    with _database_factory() as make:
        yield make


PIPELINE = "dl_agent_pipeline"
RETRAIN = "dl_agent_retrain"


def live_env(home, airflow_db: str, mlflow_db: str, optuna_db: str) -> dict:
    """The live stack's environment: PostgreSQL stores, dead tasks detected in a minute, and no retrain on the clock."""
    from dlagent_dev.stack import postgres_stack_env

    return postgres_stack_env(
        home, airflow_db=airflow_db, mlflow_db=mlflow_db, optuna_db=optuna_db,
        # A task whose process died (scheduler killed) is failed and retried after 60 s, not 5 min.
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="60",
        AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="15",
        # dl_agent_retrain is unpaused here: on its default clock a session that spans Monday 03:00 UTC got a
        # scheduled retrain beside the asset-triggered one the tests start (and its deploy moved the champion).
        DLAGENT_RETRAIN_CRON="off",
    )


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory, session_postgres_databases):
    """The real services (what `make ui` starts) on PostgreSQL, shared by the tests that need them.

    Started on first use, stopped at the end of the session whatever happens; `stack.api` is a
    logged-in REST client, and both pipeline DAGs are unpaused.
    """
    from dlagent_dev.airflow_api import AirflowApi
    from dlagent_dev.stack import ADMIN_USER, LocalStack, free_port

    home = tmp_path_factory.mktemp("live")
    env = live_env(home, session_postgres_databases(), session_postgres_databases(), session_postgres_databases())
    stack = LocalStack(env, airflow_port=free_port(), mlflow_port=free_port())
    with stack:
        api = AirflowApi(stack.airflow_url, ADMIN_USER, stack.admin_password)
        for dag_id in (PIPELINE, RETRAIN):
            api.wait_for_dag(dag_id)
            api.unpause(dag_id)
        stack.api = api
        yield stack


class Procs(list):
    """The processes a test starts: ``append`` a ``Popen`` (or ``start`` a command, in a process
    group of its own). Afterwards each one is stopped with everything it started: its whole
    process group when it leads one (TERM, KILL after a grace period, until the group is empty),
    else the process and its descendants."""

    def __init__(self):
        super().__init__()
        self._leads_group: dict[int, bool] = {}

    def append(self, proc) -> None:
        info = dev_procs.read_process(proc.pid)
        leads = info is not None and info.pgid == proc.pid
        self._leads_group[proc.pid] = leads
        if leads:
            dev_procs.register_group(proc.pid)  # the session's leftover check looks there too
        super().append(proc)

    def extend(self, procs) -> None:
        for proc in procs:
            self.append(proc)

    def start(self, command: list[str], **popen_kwargs):
        proc = dev_procs.start(command, **popen_kwargs)
        self.append(proc)
        return proc

    def stop(self, proc, *, grace: float = 10.0) -> list:
        """Stop one of them now (e.g. a server taken down mid-test); returns what survived."""
        return dev_procs.stop(proc, leads_group=self._leads_group.get(proc.pid, False), grace=grace)


@pytest.fixture(scope="session")
def live_pipeline_run(live_stack):
    """One pipeline run through the REST API on the live services, triggered once per session and shared:
    it rides out three faults (tests/reliability/fault_chain.py), the fault test records them, the
    end-to-end test reads the finished run, the clear-and-re-run test replays it. Every task process
    there imports TensorFlow, so a run costs a minute or two; one run serves them all."""
    from tests.pipeline_confs import LIVE_CONF
    from tests.reliability.fault_chain import run_with_faults

    return run_with_faults(live_stack, "rest_e2e", LIVE_CONF)


@pytest.fixture
def procs():
    """Processes a test starts (append them, or ``procs.start(command)``); stopped afterwards with
    whatever they started, and the test errors if any survives."""
    started = Procs()
    yield started
    survivors = []
    for proc in started:  # only the processes this test started
        survivors += started.stop(proc)
    assert not survivors, dev_leftovers.report(survivors, "process(es) survived SIGKILL")


@pytest.fixture
def postgres_url(postgres_databases) -> str:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    return postgres_databases()


@pytest.fixture(scope="session")
def digits_small():
    """A small stratified digits split, loaded once: quick enough for many training tests."""
    from dlagent.ml.data import load_dataset

    return load_dataset("digits", seed=0, max_samples=600)
