"""The real local stack: Airflow's services and an MLflow tracking server as processes.

``make ui`` (``python -m dlagent_dev.cli ui``) starts what a deployment runs — api-server,
scheduler, dag-processor, triggerer (LocalExecutor, or CeleryExecutor with workers) and
``mlflow server`` — natively on this machine, with the same commands as
``docker-compose.yaml``. The end-to-end tests start the very same :class:`LocalStack`.

Stores: the embedded SQLite files under ``$DLAGENT_HOME`` by default; PostgreSQL when
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (Airflow) and ``DLAGENT_MLFLOW_BACKEND_STORE_URI``
(MLflow) say so. Secrets (the admin password, the JWT secret shared by all Airflow
components) are generated once per home into ``0600`` files, never written in the repo.

Each service runs in a process group of its own (:mod:`dlagent_dev.procs`), tagged with its
home: :meth:`LocalStack.stop` ends every group and waits until it is empty, and
:meth:`LocalStack.start` first stops what a killed earlier stack of the same home left running,
so its ports are free again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dlagent_dev import cpu_quota, leftovers, procs
from dlagent_dev import env as dev_env
from dlagent_dev.airflow_api import AirflowApi

ADMIN_USER = "admin"
AIRFLOW_PORT = 8080
MLFLOW_PORT = 5000
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# LocalExecutor: dlagent's, whose task processes start with TensorFlow loaded (dlagent.executors)
EXECUTORS = {"LocalExecutor": "dlagent.executors.WarmLocalExecutor",
             "CeleryExecutor": "airflow.providers.celery.executors.celery_executor.CeleryExecutor"}
CELERY_CONFIG_OPTIONS = "dlagent.celery_config.CELERY_CONFIG"
MIN_HEARTBEAT_INTERVAL = "1"


def service_commands(*, airflow_port: int = AIRFLOW_PORT, mlflow_port: int = MLFLOW_PORT,
                     host: str = "127.0.0.1", backend_store_uri: str = "sqlite:///mlflow.db",
                     artifacts_destination: str = "./mlartifacts", celery_queues: str = "default",
                     celery_concurrency: int = 1) -> dict[str, list[str]]:
    """Each service's command line (program first), shared with docker-compose.yaml."""
    return {
        "api-server": ["airflow", "api-server", "--host", host, "--port", str(airflow_port)],
        "scheduler": ["airflow", "scheduler"],
        "dag-processor": ["airflow", "dag-processor"],
        "triggerer": ["airflow", "triggerer"],
        "mlflow": ["mlflow", "server", "--backend-store-uri", backend_store_uri,
                   "--artifacts-destination", artifacts_destination, "--serve-artifacts",
                   "--host", host, "--port", str(mlflow_port)],
        "celery-worker": ["airflow", "celery", "worker", "--queues", celery_queues,
                          "--concurrency", str(celery_concurrency)],
    }


def _secret_file(path: Path, make) -> str:
    """Read a generated secret, creating it (mode 0600) the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a second stack beside a person's own)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def postgres_stack_env(home: Path, *, airflow_db: str, mlflow_db: str, optuna_db: str, **extra: str) -> dict:
    """The environment of a throw-away stack in ``home`` with all three stores on PostgreSQL.

    Airflow's metadata DB, the MLflow server's backend store and the Optuna study (also the
    deploy lock) each get one of the given ``postgresql+psycopg2://`` URLs; the metadata DB
    is migrated. ``extra`` variables are added. Used by the live tests and the benchmarks.
    """
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "AIRFLOW", "DLAGENT_")) or k == leftovers.SESSION_ENV}
    env = dev_env.stack_env({**base, "DLAGENT_HOME": str(home)})
    env.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "DLAGENT_MLFLOW_BACKEND_STORE_URI": mlflow_db,
        "AIRFLOW_CONN_OPTUNA_DEFAULT": optuna_db.replace("postgresql+psycopg2://", "postgresql://"),
        "DLAGENT_DEPLOY_DIR": str(Path(home) / "deploy"),
        **extra,
    })
    dev_env.setup(env)
    return env


@dataclass
class LocalStack:
    """Airflow + MLflow server processes for one ``DLAGENT_HOME``; stop() ends them all."""

    env: dict
    airflow_port: int = AIRFLOW_PORT
    mlflow_port: int = MLFLOW_PORT
    executor: str = "LocalExecutor"
    celery_workers: int = 0
    # CPU affinity of each Celery worker (worker i runs on celery_cpus[i]; its pool and task
    # processes inherit it): one pinned worker stands for one machine. None: not pinned.
    celery_cpus: tuple[tuple[int, ...], ...] | None = None
    # CPU affinity of every other service (Airflow's, MLflow's). None: not pinned. A benchmark
    # that pins one worker can put the services on its CPU, so they take their CPU from the
    # workers as they do when two pinned workers fill the machine.
    service_cpus: tuple[int, ...] | None = None
    # At most this many cores for each Celery worker with everything it starts (a cpu cgroup,
    # dlagent_dev.cpu_quota): with celery_cpus, a worker is a machine of that size and the rest of
    # its CPU is left to the services. None: no quota.
    celery_cpu_quota: float | None = None
    # The queues each Celery worker consumes (worker i: celery_queues[i], comma-separated, as
    # `airflow celery worker --queues` takes them), e.g. one site's queue per worker. None: "default".
    celery_queues: tuple[str, ...] | None = None
    restart_crashed: bool = True
    processes: dict = field(default_factory=dict)
    restarts: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.celery_cpus is not None and len(self.celery_cpus) < self.celery_workers:
            raise ValueError(f"celery_cpus gives {len(self.celery_cpus)} CPU sets for {self.celery_workers} Celery workers: "
                             "give one per worker")
        if self.celery_queues is not None and len(self.celery_queues) < self.celery_workers:
            raise ValueError(f"celery_queues gives {len(self.celery_queues)} queue lists for {self.celery_workers} Celery workers: "
                             "give one per worker")
        self._stopped: set[str] = set()
        self._log_ports: dict[str, int] = {}
        self._quota_groups: dict[str, Path] = {}
        home = Path(self.env["DLAGENT_HOME"])
        self.home = home
        self.log_dir = home / "stack-logs"
        mlflow_dir = home / "mlflow"
        backend = self.env.get("DLAGENT_MLFLOW_BACKEND_STORE_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}"
        self.backend_store_uri = backend
        self.artifacts_destination = str(mlflow_dir / "artifacts")
        airflow_home = Path(self.env["AIRFLOW_HOME"])
        self.password_file = airflow_home / "simple_auth_manager_passwords.json"
        self.admin_password = json.loads(_secret_file(
            self.password_file, lambda: json.dumps({ADMIN_USER: secrets.token_urlsafe(12)})))[ADMIN_USER]
        jwt_secret = _secret_file(airflow_home / "jwt_secret", lambda: secrets.token_urlsafe(32))
        self.env.update({
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS.get(self.executor, self.executor),
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.password_file),
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW_CONN_MLFLOW_DEFAULT": self.mlflow_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "DLAGENT_MLFLOW_UI_URL": self.mlflow_url,
            # Processes the DAG folder promptly, so a new DAG shows up in seconds.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": self.env.get("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30"),
        })
        # A worker's slot is free at most 1 s after its task process ends, not 5 (README, "Task processes").
        self.env.setdefault("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", MIN_HEARTBEAT_INTERVAL)
        if self.executor in ("CeleryExecutor", EXECUTORS["CeleryExecutor"]):
            # warm workers: TensorFlow, Keras and MLflow imported once, before the task processes fork (dlagent.celery_config)
            self.env.setdefault("AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS", CELERY_CONFIG_OPTIONS)
            self.env.setdefault("AIRFLOW__CELERY__BROKER_URL", "redis://127.0.0.1:6379/0")
            db = self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            self.env.setdefault("AIRFLOW__CELERY__RESULT_BACKEND", "db+" + db)

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def commands(self) -> dict[str, list[str]]:
        commands = service_commands(airflow_port=self.airflow_port, mlflow_port=self.mlflow_port,
                                    backend_store_uri=self.backend_store_uri,
                                    artifacts_destination=self.artifacts_destination)
        wanted = ["mlflow", *AIRFLOW_SERVICES]
        selected = {name: commands[name] for name in wanted}
        for index in range(self.celery_workers if "CeleryExecutor" in self.executor else 0):
            command = service_commands(celery_queues=self.celery_queues[index])["celery-worker"] if self.celery_queues else commands["celery-worker"]
            selected[f"celery-worker-{index + 1}"] = [*command, "--celery-hostname", f"worker{index + 1}@%h"]
        return selected

    def _service_env(self, name: str) -> dict:
        """Each process that serves task logs gets its own port, so two stacks (or two Celery
        workers) on one machine do not fight over Airflow's defaults 8793/8794."""
        if name not in self._log_ports:
            default = {"triggerer": 8794, "scheduler": 8793}.get(name)
            shared_defaults = self.airflow_port == AIRFLOW_PORT and default is not None
            self._log_ports[name] = default if shared_defaults else free_port()
        key = "TRIGGER_LOG_SERVER_PORT" if name == "triggerer" else "WORKER_LOG_SERVER_PORT"
        return {**self.env, f"AIRFLOW__LOGGING__{key}": str(self._log_ports[name])}

    @property
    def tag(self) -> str:
        """What every process of this stack carries (``DLAGENT_PROC_TAG``): one per home."""
        return f"stack:{self.home.resolve()}"

    def start_service(self, name: str) -> subprocess.Popen:
        """Start one service (again, after a crash or a kill); its output goes to stack-logs/<name>.log."""
        command = self.commands()[name]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process
        cpus, group = self._cpus_of(name), self._quota_group(name)

        def confine() -> None:  # in the child, before exec: what it starts inherits both
            if cpus:
                os.sched_setaffinity(0, cpus)
            if group is not None:
                cpu_quota.join(group)

        process = procs.start([dev_env.executable(command[0]), *command[1:]], tag=self.tag, env=self._service_env(name),
                              stdout=log, stderr=subprocess.STDOUT, preexec_fn=confine if cpus or group else None)
        log.close()
        self._stopped.discard(name)
        self.processes[name] = process
        return process

    def _quota_group(self, name: str) -> Path | None:
        """Celery worker ``name``'s cpu cgroup (made once, kept across restarts), or None."""
        if self.celery_cpu_quota is None or not name.startswith("celery-worker-"):
            return None
        if name not in self._quota_groups:
            self._quota_groups[name] = cpu_quota.create(f"dlagent-{name}", self.celery_cpu_quota)
        return self._quota_groups[name]

    def _cpus_of(self, name: str) -> tuple[int, ...] | None:
        """The CPUs service ``name`` is pinned to (``celery_cpus`` for Celery worker
        ``celery-worker-<i>``, ``service_cpus`` for the others), or None."""
        if not name.startswith("celery-worker-"):
            return tuple(self.service_cpus) if self.service_cpus else None
        if not self.celery_cpus:
            return None
        return tuple(self.celery_cpus[int(name.rsplit("-", 1)[1]) - 1])

    def celery_worker_of(self, run_id: str, task_id: str) -> dict[int, str]:
        """map_index (-1: not mapped) of each instance of ``task_id`` in ``run_id`` -> the Celery
        worker (``celery-worker-<i>``) whose log shows it receiving that instance."""
        ran = {}
        for log in sorted(self.log_dir.glob("celery-worker-*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if f"task_id='{task_id}'" in line and f"run_id='{run_id}'" in line:
                    found = re.search(r"map_index=(-?\d+)", line)
                    ran[int(found.group(1)) if found else -1] = log.stem
        return ran

    def stop_leftovers(self) -> list[procs.ProcInfo]:
        """Stop the services an earlier stack of this home left running when it was killed
        (SIGKILL gives it no chance to stop them), so their ports are free again.

        Refuses (RuntimeError) while that stack's own process is alive: it is still in use.
        """
        stopped, owner = procs.stop_orphans(self.tag)
        if owner:
            raise RuntimeError(f"the services of {self.home} are running, started by process {owner.split(':')[0]} "
                               f"(another `make ui`?): stop it first (Ctrl-C there, or kill {owner.split(':')[0]})")
        return stopped

    def start(self, *, timeout: float = 180.0) -> None:
        left = self.stop_leftovers()
        if left:
            print(f"[dlagent stack] stopped {len(left)} process(es) a killed earlier stack of {self.home} left running", flush=True)
        Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        for name in self.commands():
            self.start_service(name)
        self.wait_healthy(timeout=timeout)
        if self.restart_crashed:
            self._stopping = threading.Event()
            self._watchdog = threading.Thread(target=self._supervise, name="dlagent-stack-watchdog", daemon=True)
            self._watchdog.start()

    def restart_crashed_services(self) -> list[str]:
        """Start again every service that exited on its own, as compose's ``restart: always`` does.

        A scheduler loses its database connection when PostgreSQL restarts and exits; a
        deployment's process manager brings it back, and so does this.
        """
        restarted = []
        for name, process in list(self.processes.items()):
            if process.poll() is not None and name not in self._stopped:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                with open(self.log_dir / f"{name}.log", "a") as log:
                    log.write(f"\n[dlagent stack] {name} exited with {process.returncode}; restart {self.restarts[name]}\n")
                procs.stop_group(process)  # what the crashed service started may still hold its port
                self.start_service(name)
                restarted.append(name)
        return restarted

    def _supervise(self) -> None:
        while not self._stopping.wait(2.0):
            self.restart_crashed_services()

    def wait_healthy(self, *, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        checks = {"mlflow": f"{self.mlflow_url}/health", "api-server": f"{self.airflow_url}/api/v2/monitor/health"}
        pending = dict(checks)
        while pending:
            for name, url in list(pending.items()):
                if _get(url) == 200:
                    pending.pop(name)
            dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"stack services exited: {dead}; see {self.log_dir}/<service>.log\n{self.tail_logs()}")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout:.0f} s: {sorted(pending)}; see {self.log_dir}\n{self.tail_logs()}")
            if pending:
                time.sleep(1.0)

    def stop_service(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 30.0, restart: bool = False) -> None:
        """Stop one service: its whole process group (a scheduler's task processes, MLflow's
        uvicorn workers and job runners too), SIGKILL after ``timeout`` s, until none is left.

        ``restart=True`` lets the watchdog start it again (a crash); otherwise it stays down
        until :meth:`start_service`.
        """
        if not restart:
            self._stopped.add(name)
        process = self.processes.get(name)
        if process is None:
            return
        left = procs.stop_group(process, sig=sig, grace=timeout)  # also when the leader already exited
        if left:
            raise RuntimeError(f"{name}: still running after SIGKILL: {leftovers.report(left)}")

    def stop(self) -> None:
        """End every service (TERM, then KILL after 30 s), the whole process group each, and
        return when no process of any of them is left.

        The services are stopped at once, each in its own thread: one after the other, their
        graceful exits added up (about 20 s, the triggerer alone 11 s) at every stack's end."""
        if getattr(self, "_stopping", None) is not None:
            self._stopping.set()
            self._watchdog.join(timeout=10)
        failures = []

        def stop_one(name: str) -> None:
            try:
                self.stop_service(name)
            except RuntimeError as exc:  # stop the others all the same
                failures.append(str(exc))

        threads = [threading.Thread(target=stop_one, args=(name,), name=f"stop-{name}") for name in self.processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for group in self._quota_groups.values():  # their processes have ended
            cpu_quota.remove(group)
        if failures:
            raise RuntimeError("\n".join(failures))

    def tail_logs(self, lines: int = 15) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def failure_report(self, api: AirflowApi, dag_id: str, run_id: str, lines: int = 40) -> str:
        """What a person opening a failed run would look at first: every task instance that did not
        succeed, with the end of its latest task log, then the end of the service logs. A failed live
        test prints this, so a CI log names the task and its error rather than only the API's chatter."""
        parts = []
        try:
            instances = api.task_instances(dag_id, run_id)
        except Exception as exc:  # noqa: BLE001 - the report must not hide the failure it reports
            instances, parts = [], [f"task instances unavailable: {exc}"]
        bad = [t for t in instances if t["state"] not in ("success", "skipped")]
        parts.append("task instances not successful: " + (", ".join(
            f"{t['task_id']}[{t['map_index']}] {t['state']} try {t['try_number']}" for t in bad) or "none"))
        run_logs = Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for t in bad:
            folder = run_logs / f"task_id={t['task_id']}"
            if t["map_index"] >= 0:
                folder = folder / f"map_index={t['map_index']}"
            attempts = sorted(folder.glob("attempt=*.log"), key=lambda p: p.stat().st_mtime)
            if attempts:
                text = attempts[-1].read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {attempts[-1].relative_to(run_logs)}\n" + "\n".join(text))
        parts.append(self.tail_logs(lines // 4))
        return "\n".join(parts)

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
