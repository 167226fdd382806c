"""The Airflow and MLflow UIs in a real browser: what a person clicks, from the login to the run in MLflow.

Headless Chromium (Debian's ``chromium`` package, never a downloaded browser) driven by Playwright,
against the live stack (the real api-server, scheduler, dag-processor, triggerer and MLflow server
on PostgreSQL): log in, open ``dl_agent_pipeline``, fill the trigger form (the DAG's Params) for a
small run, trigger it and check the run's conf; then open the session's finished pipeline run (the
``live_pipeline_run`` fixture, triggered through the same REST API the form posts to), open its
``train`` task instance, click its **MLflow run** extra link and check that the MLflow UI shows that
run. Screenshots of every step go
to ``$DLAGENT_SCREENSHOT_DIR`` (default: a pytest tmp dir); ``docs/screenshots/`` holds a committed
set, made with ``DLAGENT_SCREENSHOT_DIR=docs/screenshots``.

The form's run is marked failed through the REST API as soon as its conf is checked (its tasks are
skipped or stopped): the full pipeline is test_live_stack's subject, and running a second one to its
``train`` task only held the CPUs (about a minute of the suite) to show a link the finished run shows too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import PIPELINE, required_on_ci
from tests.e2e.test_live_stack import mlflow_api
from tests.pipeline_confs import LIVE_CONF

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHROMIUM = os.environ.get("DLAGENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "install Debian's browser: sudo apt-get install -y chromium (or point DLAGENT_CHROMIUM at a Chromium binary)"
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 60_000  # generous: the machine has 2 cores and may be busy with the pipeline
# The run the browser triggers: LIVE_CONF's fields (the JSON search space and candidate list exercise the
# form's JSON editors) with tuning off (n_trials 0); in its own MLflow experiment and registering under its own
# model name, so it can never move test_live_stack's champion (it is stopped at once anyway).
BROWSER_CONF = {**LIVE_CONF, "n_trials": 0, "experiment_name": "browser", "model_name": "browser-classifier"}
TASK = "train"  # a task with its own MLflow child run, named after the task


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's Chromium; requested before ``live_stack`` so a missing browser skips before the stack starts."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"no Chromium at {CHROMIUM}: {INSTALL_HINT}"
        required_on_ci(message)  # .ci/run installs it
    return CHROMIUM


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("DLAGENT_SCREENSHOT_DIR") or tmp_path / "screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser_context(chromium_executable, screenshots):
    """A fresh headless browser (new empty profile) and context; all closed afterwards, whatever happens."""
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            context.set_default_timeout(TIMEOUT_MS)
            context.set_default_navigation_timeout(TIMEOUT_MS)
            try:
                yield context
            finally:
                context.close()
        finally:
            browser.close()


def _shot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / name))


def _fill_param(dialog, name: str, value) -> None:
    """Set one Param's field in Airflow's trigger form (the form names each field ``element_<param>``)."""
    if isinstance(value, dict | list):
        # A JSON Param is a Monaco editor: select all, type the JSON, then drop what the editor's
        # auto-closing of brackets and quotes may have appended after the cursor.
        dialog.locator(f"#element_{name}").click()
        page = dialog.page
        page.keyboard.press("ControlOrMeta+a")
        page.keyboard.insert_text(json.dumps(value))
        page.keyboard.press("ControlOrMeta+Shift+End")
        page.keyboard.press("Delete")
        return
    select = dialog.locator(f'#element_{name} input[role="combobox"]')
    if select.count():  # an enum Param: a searchable select
        select.click()
        select.fill(str(value))
        select.press("Enter")
        expect(dialog.locator(f'input[type="hidden"][name="element_{name}"]')).to_have_value(str(value))
        return
    field = dialog.locator(f'input[name="element_{name}"]')
    field.fill(str(value))
    field.press("Tab")  # number fields take their value on blur
    expect(field).to_have_value(str(value))


def _run_path(run_id: str) -> str:
    return f"/api/v2/dags/{PIPELINE}/dagRuns/{quote(run_id, safe='')}"


def _stop_browser_runs(stack) -> list[str]:
    """Mark every unfinished run this test triggered failed (running tasks are stopped, the rest skipped)."""
    stopped = []
    for run in stack.api.get(f"/api/v2/dags/{PIPELINE}/dagRuns?limit=100")["dag_runs"]:
        if (run.get("conf") or {}).get("experiment_name") == BROWSER_CONF["experiment_name"] and run["state"] in ("queued", "running"):
            stack.api.set_run_state(PIPELINE, run["dag_run_id"], "failed")
            stopped.append(run["dag_run_id"])
    return stopped


@pytest.fixture
def stop_browser_runs(live_stack):
    """At teardown (whatever the test did), mark the runs it triggered failed: nothing keeps the CPUs busy."""
    yield
    for run_id in _stop_browser_runs(live_stack):
        assert live_stack.api.get(_run_path(run_id))["state"] == "failed"


def _mlflow_run_id(stack, experiment_name: str, run_id: str, task_id: str) -> tuple[str, str]:
    """(experiment id, MLflow run id) of the task's child run, through the MLflow server's REST API."""
    experiment = mlflow_api(stack, "experiments/get-by-name", experiment_name=experiment_name)["experiment"]
    query = f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.task_id` = '{task_id}'"
    (run,) = mlflow_api(stack, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": query})["runs"]
    return experiment["experiment_id"], run["info"]["run_id"]


def test_trigger_in_the_ui_and_follow_the_mlflow_run_link(chromium_executable, live_stack, live_pipeline_run, stop_browser_runs,
                                                          browser_context, screenshots):
    airflow, api = live_stack.airflow_url, live_stack.api
    page = browser_context.new_page()
    try:
        # 1. The login page of Airflow's simple auth manager.
        page.goto(f"{airflow}/")
        page.wait_for_url("**/auth/login**")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(live_stack.admin_password)
        sign_in = page.get_by_role("button", name="Sign in")
        expect(sign_in).to_be_enabled()
        _shot(page, screenshots, "01-login.png")
        sign_in.click()
        page.wait_for_url(lambda url: "/auth/login" not in url)

        # 2. The DAG's page.
        page.goto(f"{airflow}/dags/{PIPELINE}")
        trigger = page.get_by_role("button", name="Trigger Dag")
        expect(trigger).to_be_visible()
        expect(page.get_by_text("validate_inputs").first).to_be_visible()
        _shot(page, screenshots, "02-dag.png")

        # 3. The trigger form: one field per Param of the DAG.
        trigger.click()
        dialog = page.get_by_role("dialog")
        expect(dialog.locator('input[name="element_epochs"]')).to_be_visible()
        for name, value in BROWSER_CONF.items():
            _fill_param(dialog, name, value)
        submit = dialog.get_by_role("button", name="Trigger", exact=True)
        expect(dialog.get_by_text("SyntaxError")).to_have_count(0)  # the JSON fields parsed
        expect(submit).to_be_enabled()
        dialog.get_by_text(f"Trigger Dag - {PIPELINE}").scroll_into_view_if_needed()
        _shot(page, screenshots, "03-trigger-form.png")
        submit.click()

        # 4. The UI opens the new run; its conf is what the form said.
        page.wait_for_url(f"**/dags/{PIPELINE}/runs/**")
        run_id = unquote(page.url.split("/runs/", 1)[1].split("/", 1)[0].split("?", 1)[0])
        run = api.get(_run_path(run_id))
        assert run["run_type"] == "manual"
        assert {key: run["conf"].get(key) for key in BROWSER_CONF} == BROWSER_CONF, run["conf"]
        assert run_id in _stop_browser_runs(live_stack)

        # 5. A finished run of the pipeline (the session's; its train task has its MLflow child run).
        run_id = live_pipeline_run["run_id"]
        assert live_pipeline_run["state"] == "success", live_pipeline_run["detail"]
        page.goto(f"{airflow}/dags/{PIPELINE}/runs/{quote(run_id, safe='')}")
        task_cell = page.locator(f'a[href$="/runs/{run_id}/tasks/{TASK}"]').first  # this run's cell, not the stopped one's
        expect(task_cell).to_be_visible()
        page.wait_for_timeout(2000)  # let the grid draw the states it polled
        _shot(page, screenshots, "04-run.png")

        # 6. The task instance, its Details tab: the operator's extra links.
        task_cell.click()
        page.wait_for_url(f"**/runs/**/tasks/{TASK}")
        page.locator(f'a[href$="/tasks/{TASK}/details"]').click()
        link = page.get_by_role("link", name="MLflow run", exact=True)
        expect(link).to_be_visible()
        experiment_id, mlflow_run = _mlflow_run_id(live_stack, live_pipeline_run["conf"]["experiment_name"], run_id, TASK)
        expected = f"{live_stack.mlflow_url}/#/experiments/{experiment_id}/runs/{mlflow_run}"
        expect(link).to_have_attribute("href", expected)
        _shot(page, screenshots, "05-task-links.png")

        # 7. The link opens the task's run in the MLflow UI, in a new tab.
        with browser_context.expect_page() as popup:
            link.click()
        mlflow_page = popup.value
        mlflow_page.wait_for_url(lambda url: mlflow_run in url)
        expect(mlflow_page.get_by_role("heading", name=TASK, exact=True)).to_be_visible()
        expect(mlflow_page.get_by_text(mlflow_run, exact=True).first).to_be_visible()
        close_assistant = mlflow_page.get_by_role("button", name="Close", exact=True)
        if close_assistant.count() == 1:  # MLflow 3 opens its assistant panel beside the run: hide it
            close_assistant.click()
        _shot(mlflow_page, screenshots, "06-mlflow-run.png")
        assert mlflow_page.url.startswith(f"{live_stack.mlflow_url}/") and mlflow_run in mlflow_page.url
    except Exception:
        for number, open_page in enumerate(browser_context.pages):  # what the browser showed, for the report
            try:
                open_page.screenshot(path=str(screenshots / f"failure-{number}.png"))
            except Exception:  # noqa: BLE001 - never hide the test's own error
                pass
        print(f"screenshots: {screenshots}")
        raise
