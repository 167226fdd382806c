"""The plugin's pages, served by Airflow's own api-server app, on a real MLflow store with agent runs.

``airflow.api_fastapi.app.create_app`` mounts the plugin's FastAPI app at ``/dlagent`` as
``airflow api-server`` does; requests carry a JWT made by the configured auth manager
(SimpleAuthManager), in the ``Authorization`` header or the UI's ``_token`` cookie.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow import MlflowClient

from tests.plugin.conftest import DAG_ID, RUN_ID

RUN_PATH = f"/dlagent/runs/{DAG_ID}/{quote(RUN_ID, safe='')}"


@pytest.fixture(scope="module")
def api():
    """``(client, token(role))``: a TestClient on the api-server app with an Airflow metadata DB."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.utils.db import initdb
    from fastapi.testclient import TestClient

    initdb()  # the session's SQLite metadata DB (authorization reads DAG/team rows)
    client = TestClient(create_app(apps="core"))

    def token(role: str | None = "admin", username: str = "tester") -> str:
        return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))

    return client, token


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


PROTECTED = ["/dlagent/", "/dlagent/api/runs", RUN_PATH, f"/dlagent/api/runs/{DAG_ID}/{quote(RUN_ID, safe='')}",
             f"{RUN_PATH}/plots/optimization_history.png"]


@pytest.mark.parametrize("path", PROTECTED)
def test_unauthenticated_requests_are_refused(api, pipeline_env, path):
    client, _ = api
    response = client.get(path)
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}
    assert "decisions" not in response.text
    assert client.get(path, headers=bearer("not-a-jwt")).status_code == 403
    assert client.get(path, cookies={"_token": "not-a-jwt"}).status_code == 403


def test_a_user_without_access_to_the_dag_is_refused_and_sees_no_runs(api, pipeline_env):
    client, token = api
    nobody = token(role=None)  # authenticated, but no role: may read no DAG
    assert client.get(RUN_PATH, headers=bearer(nobody)).status_code == 403
    assert client.get("/dlagent/api/runs", headers=bearer(nobody)).json() == {"runs": [], "total_entries": 0}


def test_index_lists_the_dag_run_with_its_agent_actions(api, pipeline_env):
    client, token = api
    response = client.get("/dlagent/api/runs", headers=bearer(token("viewer")))
    assert response.status_code == 200
    (row,) = [r for r in response.json()["runs"] if r["run_id"] == RUN_ID]
    assert row["dag_id"] == DAG_ID and row["study"] == f"{DAG_ID}.{RUN_ID}"
    assert [(d["task_id"], d["phase"]) for d in row["decisions"]] == [("agent_plan", "plan"), ("agent_decide", "decide")]
    assert row["decisions"][1]["action"] == pipeline_env.results["agent_decide"]["action"]

    html = client.get("/dlagent/", headers=bearer(token("viewer")))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert f'href="{RUN_PATH}"' in html.text  # links stay under the mount point
    assert client.get("/dlagent/?dag_id=another_dag", headers=bearer(token())).text.count(RUN_PATH) == 0


def test_run_page_shows_each_decision_with_its_reasons_from_decisions_json(api, pipeline_env):
    client, token = api
    details = client.get(f"/dlagent/api/runs/{DAG_ID}/{quote(RUN_ID, safe='')}", headers=bearer(token())).json()
    mlflow = MlflowClient(pipeline_env.uri)
    for decision, label in zip(details["decisions"], ["agent_plan", "agent_decide"], strict=True):
        stored = json.loads(Path(mlflow.download_artifacts(decision["mlflow_run_id"], "decisions.json")).read_text())
        assert decision["task_id"] == label and decision["plan"] == stored == pipeline_env.results[label]
        assert decision["mlflow_url"] == (f"http://127.0.0.1:5000/#/experiments/{decision['experiment_id']}"
                                          f"/runs/{decision['mlflow_run_id']}")

    page = client.get(RUN_PATH, cookies={"_token": token()})  # what the browser sends: the UI's cookie
    assert page.status_code == 200
    for decision in details["decisions"]:
        for reason in decision["plan"]["reasons"]:
            assert _text(reason["because"]) in page.text
        assert decision["mlflow_url"] in page.text
    assert {t["task_id"] for t in details["tasks"]} >= {"agent_plan", "train", "compress", "evaluate", "agent_decide", "deploy"}


def test_run_page_shows_the_tuning_study_with_its_plots(api, pipeline_env):
    client, token = api
    details = client.get(f"/dlagent/api/runs/{DAG_ID}/{quote(RUN_ID, safe='')}", headers=bearer(token())).json()
    tuning = details["tuning"]
    summary = pipeline_env.results["tune_summary"]
    assert tuning["study"] == summary["study_name"] and tuning["best_value"] == pytest.approx(summary["best_value"])
    assert [t["number"] for t in tuning["trials"]] == [0, 1] and set(tuning["best_params"]) == {"learning_rate"}
    assert tuning["plots"]

    page = client.get(RUN_PATH, headers=bearer(token())).text
    sources = re.findall(r'<img class="plot" alt="[^"]*" src="([^"]+)"', page)
    assert len(sources) == len(tuning["plots"])
    image = client.get(sources[0].replace("&amp;", "&"), headers=bearer(token()))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content[:4] == b"\x89PNG"
    assert client.get(f"{RUN_PATH}/plots/..%2Fdecisions.json", headers=bearer(token())).status_code == 404


def test_unknown_dag_run_is_404(api, pipeline_env):
    client, token = api
    assert client.get(f"/dlagent/runs/{DAG_ID}/nope", headers=bearer(token())).status_code == 404
    assert client.get(f"/dlagent/api/runs/{DAG_ID}/nope", headers=bearer(token())).status_code == 404


def test_the_page_is_listed_where_the_ui_reads_plugins(api):
    client, token = api
    plugins = client.get("/api/v2/plugins", headers=bearer(token())).json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "dlagent"]
    assert plugin["fastapi_apps"] == [{"app": "dlagent.web.LazyApp", "url_prefix": "/dlagent", "name": "dlagent agent decisions"}]
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["nav"]["href"] == "dlagent/" and views["nav"]["category"] == "browse"
    assert views["dag_run"]["href"] == "dlagent/runs/{DAG_ID}/{RUN_ID}" and views["dag_run"]["url_route"]


def _text(value: str) -> str:
    from html import escape

    return escape(value)
