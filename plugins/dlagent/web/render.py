"""HTML of the pages: plain server-side markup, no JavaScript (the Airflow UI may show it in a
sandboxed frame). Every value is escaped; links inside the app are absolute paths under the
mount point (``root``), links to MLflow are absolute URLs that open in a new tab."""

from __future__ import annotations

import json
from html import escape
from urllib.parse import quote

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2rem 1.6rem; color: #1a202c; font-size: 14px; }
h1 { font-size: 1.35rem; margin: 0 0 .4rem 0; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem 0; }
h3 { font-size: 1rem; margin: 1rem 0 .3rem 0; }
table { border-collapse: collapse; margin: .3rem 0 .8rem 0; } th, td { border: 1px solid #e2e8f0; padding: .25rem .5rem;
text-align: left; vertical-align: top; } th { background: #f7fafc; font-weight: 600; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: #f7fafc; border: 1px solid #e2e8f0; padding: .5rem; overflow-x: auto; max-width: 70rem; }
.muted { color: #718096; } .error { color: #c53030; }
.action { font-weight: 600; padding: 0 .35rem; border-radius: 4px; background: #edf2f7; }
.action-deploy { background: #c6f6d5; } .action-retune { background: #fefcbf; } .action-stop { background: #fed7d7; }
img.plot { max-width: 46rem; width: 100%; border: 1px solid #e2e8f0; margin: .3rem 0; }
nav { margin-bottom: .8rem; } nav a { margin-right: 1rem; }
"""


def _e(value) -> str:
    return escape("" if value is None else str(value))


def _ext(url: str | None, text) -> str:
    if not url:
        return _e(text)
    return f'<a href="{_e(url)}" target="_blank" rel="noopener noreferrer">{_e(text)}</a>'


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _action(action) -> str:
    if not action:
        return '<span class="muted">-</span>'
    return f'<span class="action action-{_e(action)}">{_e(action)}</span>'


def run_path(root: str, dag_id: str, run_id: str) -> str:
    return f"{root}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def page(title: str, body: str, root: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><nav><a href="{_e(root)}/">All DAG runs</a></nav>{body}</body></html>')


def index(rows: list[dict], root: str, *, dag_id: str | None, ui_url: str) -> str:
    form = (f'<form method="get" action="{_e(root)}/"><label>DAG id <input name="dag_id" value="{_e(dag_id or "")}"></label> '
            f'<button type="submit">Filter</button></form>')
    if not rows:
        table = (f'<p class="muted">No dlagent DAG run in MLflow yet{" for this DAG" if dag_id else ""} '
                 f'(or none of a DAG you may read). MLflow UI: {_ext(ui_url, ui_url)}</p>')
    else:
        lines = ["<table><tr><th>DAG</th><th>DAG run</th><th>started</th><th>MLflow status</th><th>agent decisions</th>"
                 "<th>deploy</th><th>test metric</th><th>MLflow</th></tr>"]
        for row in rows:
            decisions = "<br>".join(_decision_line(d) for d in row["decisions"]) or '<span class="muted">none</span>'
            link = run_path(root, row["dag_id"] or "", row["run_id"] or "")
            lines.append(
                f'<tr><td>{_e(row["dag_id"])}</td><td><a href="{_e(link)}">{_e(row["run_id"])}</a></td><td>{_e(row["start_time"])}</td>'
                f'<td>{_e(row["status"])}</td><td>{decisions}</td><td>{_e(row["deploy"] or "")}</td>'
                f'<td>{_e(row["metric"]) + " " + _num(row["test_metric"]) if row["test_metric"] is not None else ""}</td>'
                f'<td>{_ext(row["mlflow_url"], "parent run")}</td></tr>')
        lines.append("</table>")
        table = "".join(lines)
    body = (f"<h1>dlagent: agent decisions by DAG run</h1>"
            f'<p class="muted">Newest first, read from MLflow ({_ext(ui_url, ui_url)}). '
            f"A DAG run is one MLflow parent run; each agent task is a child run with its decisions.json.</p>"
            f"{form}{table}")
    return page("dlagent: agent decisions", body, root)


def _decision_line(d: dict) -> str:
    line = f"{_e(d['task_id'] or d['phase'] or 'agent')}: {_action(d['action'])}"
    if d["status"] != "FINISHED":
        line += f' <span class="muted">({_e(d["status"])})</span>'
    return line


def _plan_section(name: str, value) -> str:
    if value in (None, [], {}):
        return f"<tr><th>{_e(name)}</th><td class=muted>{'none' if value is None else 'empty'}</td></tr>"
    return f"<tr><th>{_e(name)}</th><td><pre>{_e(json.dumps(value, indent=2, sort_keys=True))}</pre></td></tr>"


def _decision(d: dict) -> str:
    title = f'{_e(d["task_id"] or "agent")}{"[" + _e(d["map_index"]) + "]" if d["map_index"] not in (None, "-1") else ""}'
    facts = [f"phase <b>{_e(d['phase'] or '?')}</b>", f"action {_action(d['action'])}", f"policy <b>{_e(d['policy'] or '?')}</b>"]
    if d.get("arm"):
        facts.append(f"arm <b>{_e(d['arm'])}</b>")
    if d.get("reward") is not None:
        facts.append(f"reward <b>{_num(d['reward'])}</b>")
    facts.append(f"MLflow status {_e(d['status'])}")
    parts = [f"<h3>{title}</h3><p>{' &middot; '.join(facts)}<br>"
             f'{_ext(d["mlflow_url"], "MLflow run")} &middot; {_ext(d["artifacts_url"], "decisions.json and observation.json")}'
             f'{" &middot; observed run <code>" + _e(d["observed_run_id"]) + "</code>" if d.get("observed_run_id") else ""}</p>']
    plan = d.get("plan")
    if d.get("error"):
        parts.append(f'<p class="error">{_e(d["error"])}</p>')
    if plan:
        reasons = plan.get("reasons") or []
        if reasons:
            parts.append("<table><tr><th>decision</th><th>because</th></tr>")
            for reason in reasons:
                if isinstance(reason, dict):
                    parts.append(f"<tr><td><code>{_e(reason.get('decision'))}</code></td><td>{_e(reason.get('because'))}</td></tr>")
            parts.append("</table>")
        parts.append("<details><summary>the plan, section by section</summary><table>")
        for section in ("train", "tune", "compress", "controller", "policy"):
            parts.append(_plan_section(section, plan.get(section)))
        parts.append("</table></details>")
    return "".join(parts)


def _tuning(t: dict, root: str, dag_id: str, run_id: str) -> str:
    parts = [f"<h2 id=tuning>Tuning study <code>{_e(t['study'])}</code></h2><p>"]
    if t.get("best_value") is not None:
        parts.append(f"best value <b>{_num(t['best_value'])}</b> (trial {_num(t.get('best_trial_number'))}) with "
                     f"<code>{_e(json.dumps(t['best_params'], sort_keys=True))}</code><br>")
    if t.get("trials_by_state"):
        counts = [f"{_e(k.lower())} {_e(v)}" for k, v in t["trials_by_state"].items() if v]
        parts.append("trials: " + (", ".join(counts) or "none") + "<br>")
    parts.append(f'{_ext(t["mlflow_url"], "the study in MLflow (parent run, optuna/ artifacts)")}</p>')
    for name in t.get("plots") or []:
        src = f"{run_path(root, dag_id, run_id)}/plots/{quote(name)}"
        parts.append(f'<div><img class="plot" alt="{_e(name)}" src="{_e(src)}"></div>')
    for name, why in (t.get("plots_skipped") or {}).items():
        parts.append(f'<p class="muted">plot {_e(name)} not drawn: {_e(why)}</p>')
    if t.get("trials"):
        names = list(t["best_params"]) or sorted({k for row in t["trials"] for k in row["params"]})
        parts.append("<table><tr><th>trial</th><th>state</th><th>value</th><th>epochs</th>"
                     + "".join(f"<th>{_e(n)}</th>" for n in names) + "<th>worker</th></tr>")
        for row in t["trials"]:
            worker = f"{_e(row['task_id'])}[{_e(row['map_index'])}]" if row.get("task_id") else ""
            parts.append(f"<tr><td>{_ext(row['mlflow_url'], row['number'])}</td><td>{_e(row['state'])}</td>"
                         f"<td>{_num(row['value']) if row['value'] is not None else ''}</td>"
                         f"<td>{_num(row['epochs_run']) if row['epochs_run'] is not None else ''}</td>"
                         + "".join(f"<td>{_e(row['params'].get(n))}</td>" for n in names) + f"<td>{worker}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def run_page(d: dict, root: str) -> str:
    head = (f"<h1>{_e(d['dag_id'])} &middot; <code>{_e(d['run_id'])}</code></h1>"
            f"<p>MLflow parent run {_ext(d['mlflow_url'], d['mlflow_run_id'])} ({_e(d['status'])}, started {_e(d['start_time'])}) "
            f"in {_ext(d['experiment_url'], 'experiment ' + str(d['experiment_id']))}"
            f"{'<br>deploy: ' + _e(d['deploy']) if d.get('deploy') else ''}</p>")
    body = [head, "<h2 id=decisions>Agent decisions</h2>"]
    if d["decisions"]:
        body.extend(_decision(x) for x in d["decisions"])
    else:
        body.append('<p class="muted">No agent task ran in this DAG run (or it has not started yet).</p>')
    if d.get("tuning"):
        body.append(_tuning(d["tuning"], root, d["dag_id"], d["run_id"]))
    if d.get("tasks"):
        body.append("<h2 id=tasks>Task runs in MLflow</h2><table><tr><th>task</th><th>step</th><th>status</th><th>started</th></tr>")
        for task in d["tasks"]:
            label = f"{task['task_id'] or '?'}" + (f"[{task['map_index']}]" if task.get("map_index") not in (None, "-1") else "")
            body.append(f"<tr><td>{_ext(task['mlflow_url'], label)}</td><td>{_e(task['step'])}"
                        f"{' (' + _e(task['candidate']) + ')' if task.get('candidate') else ''}</td>"
                        f"<td>{_e(task['status'])}</td><td>{_e(task['start_time'])}</td></tr>")
        body.append("</table>")
    return page(f"dlagent: {d['dag_id']} {d['run_id']}", "".join(body), root)


def not_found(dag_id: str, run_id: str, root: str, ui_url: str) -> str:
    body = (f"<h1>{_e(dag_id)} &middot; <code>{_e(run_id)}</code></h1>"
            f"<p>MLflow has no dlagent run for this DAG run yet: its first dlagent task opens it. "
            f"MLflow UI: {_ext(ui_url, ui_url)}</p>")
    return page("dlagent: no such run", body, root)
