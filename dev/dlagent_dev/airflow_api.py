"""A small client of Airflow's REST API (v2) for the developer tooling, the live tests and the
benchmarks: log in, wait for a DAG, trigger and follow runs, read task instances. The services it
talks to are started by :class:`dlagent_dev.stack.LocalStack`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request


class AirflowApi:
    """A small client of Airflow's REST API (v2), logged in as the UI's trigger button would be."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    def _send(self, method: str, path: str, body: dict | None = None, *, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path} -> HTTP {exc.code}: {exc.read().decode(errors='replace')[:800]}") from exc
        return json.loads(payload) if payload else {}

    def token(self) -> str:
        if self._token is None:
            self._token = self._send("POST", "/auth/token", {"username": self.username, "password": self.password},
                                     auth=False)["access_token"]
        return self._token

    def get(self, path: str) -> dict:
        return self._send("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self._send("POST", path, body)

    def wait_for_dag(self, dag_id: str, *, timeout: float = 180.0) -> dict:
        """Wait until the dag-processor has parsed ``dag_id`` (it shows up in the API)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get(f"/api/v2/dags/{dag_id}")
            except RuntimeError as exc:
                if "HTTP 404" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(2.0)

    def unpause(self, dag_id: str) -> None:
        self.set_paused(dag_id, False)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause ``dag_id``. A paused DAG's running runs finish the tasks they are running but
        start no new one (the scheduler skips them), which is how the fault chain holds a run between tasks."""
        self._send("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def trigger(self, dag_id: str, conf: dict, *, run_id: str | None = None) -> str:
        """Create a DAG run with ``conf`` (validated against the DAG's Params by Airflow)."""
        body = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 900.0, poll: float = 3.0) -> str:
        """Poll until the run ends; return its state ("success" or "failed")."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(poll)

    def set_run_state(self, dag_id: str, run_id: str, state: str, *, attempts: int = 4, wait: float = 1.0) -> dict:
        """Mark a DAG run success or failed, as the UI's buttons do (its running tasks are stopped).

        Tried again (``attempts`` in all, ``wait`` seconds apart) when the API server answers 500 "Database error": on
        PostgreSQL its update of the run can deadlock with the scheduler's update of one of the
        run's task instances (seen: "deadlock detected" in PostgreSQL's log, PostgreSQL aborting
        the API's side), and the same PATCH a moment later succeeds, as a second click would."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        for attempt in range(1, max(1, attempts) + 1):
            try:
                return self._send("PATCH", path, {"state": state})
            except RuntimeError as exc:
                if attempt >= attempts or "HTTP 500" not in str(exc) or "Database error" not in str(exc):
                    raise
                time.sleep(wait)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"]
