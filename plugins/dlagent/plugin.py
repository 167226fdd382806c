"""The Airflow plugin entry point (``airflow.plugins``): registers dlagent with Airflow.

* **Operator extra links** (:mod:`dlagent.links`): "MLflow run", "Tuning study", "Registered
  model" and "Agent decisions" buttons on dlagent tasks. The operators declare them
  (``operator_extra_links``), which is what Airflow 3 evaluates when a task ends; they are listed
  here too so ``airflow plugins`` and ``/api/v2/plugins`` show them. Their ``operators`` list is
  empty on purpose: a plugin link bound to an operator class replaces, in the api-server, the URL
  the worker stored, and would be evaluated there without the task's XComs.
* **A FastAPI app** at ``/dlagent`` in the api-server (:mod:`dlagent.web`): each DAG run's agent
  decisions and tuning study, behind Airflow's authentication.
* **External views**: "Agent decisions" in the Browse menu (opens the page in a new tab) and as a
  tab of every DAG run (in the Airflow UI's frame).

Loaded by every Airflow process: nothing heavy is imported here (FastAPI and MLflow are imported
by the api-server on the first request to ``/dlagent``).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from dlagent.links import ALL_LINKS, WEB_PREFIX
from dlagent.web import app as web_app

#: ``AirflowPlugin.fastapi_apps`` entry (the api-server mounts ``app`` at ``url_prefix``).
FASTAPI_APP = {"app": web_app, "url_prefix": WEB_PREFIX, "name": "dlagent agent decisions"}

#: Nav entry without ``url_route``: the UI opens ``href`` (relative to its base URL) in a new tab,
#: where links to MLflow open normally.
NAV_VIEW = {"name": "Agent decisions", "href": f"{WEB_PREFIX.lstrip('/')}/", "destination": "nav", "category": "browse"}

#: A tab on every DAG run page, shown inside the Airflow UI (``url_route`` makes it an iframe);
#: ``{DAG_ID}`` and ``{RUN_ID}`` are filled in by the UI.
DAG_RUN_VIEW = {"name": "Agent decisions", "href": f"{WEB_PREFIX.lstrip('/')}/runs/{{DAG_ID}}/{{RUN_ID}}",
                "destination": "dag_run", "url_route": "dlagent-decisions"}


class DlagentPlugin(AirflowPlugin):
    name = "dlagent"
    operator_extra_links = list(ALL_LINKS)
    fastapi_apps = [FASTAPI_APP]
    external_views = [NAV_VIEW, DAG_RUN_VIEW]
