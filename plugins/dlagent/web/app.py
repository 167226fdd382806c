"""The FastAPI app the plugin mounts at ``/dlagent`` in the Airflow api-server.

Airflow does not authenticate a plugin's FastAPI app: a Starlette mount has its own routes and
inherits none of the core API's dependencies. So this app does what the core API does:

* every route depends on Airflow's ``get_user`` (the JWT from the ``Authorization: Bearer``
  header, or the UI's ``_token`` cookie, checked by the configured auth manager): no or an
  expired token is refused with 401, an invalid one with 403;
* a DAG run's pages also depend on ``requires_access_dag("GET", DagAccessEntity.RUN)``, the
  check behind ``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}`` (403 for a user who may not
  read that DAG's runs), and the list shows only runs of DAGs the user may read.

Pages: ``/`` (latest DAG runs and their agents' actions), ``/runs/{dag_id}/{run_id}`` (the agent
decisions with their reasons, the tuning study, the task runs, with links to MLflow) and the same
as JSON under ``/api/...``. MLflow is read through ``MLflowHook`` (the ``mlflow_default``
Connection, ``MLFLOW_TRACKING_URI`` or the embedded store), imported only inside the handlers.
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, get_user, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response

from dlagent.web import render, views

READ_RUNS = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
Limit = Annotated[int, Query(ge=1, le=500, description="how many DAG runs, newest first")]


def _root(request: Request) -> str:
    """The path this app is mounted at (``/dlagent``, behind any ``[api] base_url`` prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _mlflow():
    """``(client, ui_url, redacted tracking URI)`` for this request."""
    from dlagent.hooks.mlflow import MLflowHook
    from dlagent.settings import redact_url

    hook = MLflowHook()
    return hook.client, hook.ui_url, redact_url(hook.tracking_uri)


def _unreachable(where: str, exc: Exception) -> HTTPException:
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return HTTPException(status.HTTP_502_BAD_GATEWAY, f"MLflow at {where} could not be read ({type(exc).__name__}: {first})")


def readable_dag_ids(user, dag_ids) -> set[str]:
    """The DAG ids whose runs ``user`` may read (the check ``requires_access_dag`` makes, per DAG)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    manager = get_auth_manager()
    allowed = set()
    for dag_id in {d for d in dag_ids if d}:
        details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
        if manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user):
            allowed.add(dag_id)
    return allowed


def _runs(user, dag_id: str | None, limit: int) -> tuple[list[dict], str]:
    client, ui_url, where = _mlflow()
    try:
        rows = views.pipeline_runs(client, ui_url, dag_id=dag_id, max_results=limit)
    except Exception as exc:  # noqa: BLE001 - shown to the person as a 502 naming the server
        raise _unreachable(where, exc) from exc
    allowed = readable_dag_ids(user, [r["dag_id"] for r in rows])
    return [r for r in rows if r["dag_id"] in allowed], ui_url


def _details(dag_id: str, run_id: str) -> tuple[dict | None, str]:
    client, ui_url, where = _mlflow()
    try:
        return views.run_details(client, ui_url, dag_id, run_id), ui_url
    except Exception as exc:  # noqa: BLE001
        raise _unreachable(where, exc) from exc


def create_app() -> FastAPI:
    # Authentication for every route, declared once so a route added later cannot ship without it.
    app = FastAPI(title="dlagent", dependencies=[Depends(get_user)], docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: GetUserDep, dag_id: str | None = None, limit: Limit = 50) -> HTMLResponse:
        rows, ui_url = _runs(user, dag_id or None, limit)
        return HTMLResponse(render.index(rows, _root(request), dag_id=dag_id, ui_url=ui_url))

    @app.get("/api/runs")
    def list_runs(user: GetUserDep, dag_id: str | None = None, limit: Limit = 50) -> dict:
        rows, _ = _runs(user, dag_id or None, limit)
        return {"runs": rows, "total_entries": len(rows)}

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=READ_RUNS)
    def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        details, ui_url = _details(dag_id, run_id)
        if details is None:
            return HTMLResponse(render.not_found(dag_id, run_id, _root(request), ui_url), status_code=status.HTTP_404_NOT_FOUND)
        return HTMLResponse(render.run_page(details, _root(request)))

    @app.get("/api/runs/{dag_id}/{run_id}", dependencies=READ_RUNS)
    def run_json(dag_id: str, run_id: str) -> dict:
        details, _ = _details(dag_id, run_id)
        if details is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"MLflow has no dlagent run for DAG run {dag_id}/{run_id}")
        return details

    @app.get("/runs/{dag_id}/{run_id}/plots/{name}", dependencies=READ_RUNS)
    def plot(dag_id: str, run_id: str, name: str) -> Response:
        if not views.PLOT_NAME.match(name):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such plot")
        client, _, where = _mlflow()
        try:
            parent = views.find_parent(client, dag_id, run_id)
        except Exception as exc:  # noqa: BLE001
            raise _unreachable(where, exc) from exc
        if parent is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"MLflow has no dlagent run for DAG run {dag_id}/{run_id}")
        try:
            content = views.read_plot(client, parent.info.run_id, name)
        except Exception as exc:  # noqa: BLE001 - a missing artifact
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plot optuna/{name} on MLflow run {parent.info.run_id}") from exc
        return Response(content, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    return app
