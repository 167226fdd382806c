"""``dlagent`` command line: set up the embedded local stack, run the pipeline, start services.

``python -m dlagent_dev.cli setup``     prepare ``$DLAGENT_HOME`` (Airflow home + metadata DB, MLflow store)
``python -m dlagent_dev.cli run``       run ``dl_agent_pipeline`` end to end: one line per task, then a summary
``python -m dlagent_dev.cli env``       print the environment the stack uses (``eval $(... env)``)
``python -m dlagent_dev.cli rollback``  move the registry alias ``champion`` back to ``previous`` and redeploy
``python -m dlagent_dev.cli ui``        start the real services (Airflow UI/API, scheduler, ..., MLflow server)
``python -m dlagent_dev.cli mlflow-ui`` the MLflow UI on the stack's tracking store
``python -m dlagent_dev.cli serve``     serve the registered champion over HTTP (MLflow's scoring server)

Every step is idempotent and says what it does. A configured PostgreSQL
(``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) or MLflow server (``MLFLOW_TRACKING_URI`` or the
``mlflow_default`` Connection) is used instead of the embedded SQLite stores. Whatever it starts
runs in a process group of its own and is stopped as a whole group on Ctrl-C, SIGTERM or SIGHUP
(:mod:`dlagent_dev.procs`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dlagent import settings

from dlagent_dev import procs
from dlagent_dev.env import PIPELINE_DAG, PROJECT_DIR, executable, setup, stack_env

if TYPE_CHECKING:
    from dlagent_dev.progress import DagTestProgress

__all__ = ["PROJECT_DIR", "main", "print_summary", "run_pipeline", "setup", "stack_env"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stopped_by_signals():
    """SIGTERM and SIGHUP end the block as Ctrl-C does (KeyboardInterrupt), so the clean-up runs.

    SIGINT too, explicitly: a command started as a background job of a script (``make ui &``)
    inherits SIGINT ignored, and Python then leaves it ignored, so ``kill -INT`` did nothing."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shield_cleanup() -> None:
    """From here on a second Ctrl-C (or SIGTERM) must not cut the clean-up short."""
    for sig in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)


def run_log_path(env: dict) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(env["DLAGENT_HOME"]) / "logs" / f"run-{stamp}.log"


def _follow(path: Path, process: subprocess.Popen, on_line) -> None:
    """Hand every line of ``path`` to ``on_line`` as it is written, until ``process`` exits."""
    with open(path, encoding="utf-8", errors="replace") as log:
        pending = ""
        while True:
            chunk = log.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    on_line(pending)
                    pending = ""
                continue
            if process.poll() is not None:
                rest = log.read()
                for line in (pending + rest).splitlines():
                    on_line(line)
                return
            time.sleep(0.2)


def follow_dag_test(command: list[str], env: dict, log_path: Path, *, out=None) -> tuple[int, DagTestProgress]:
    """Run ``command`` (``airflow dags test ...``) with its output in ``log_path``, and print one
    line per task start and end (duration, headline figure; the error lines of a task that
    failed) while it runs. Ctrl-C, SIGTERM or SIGHUP stop it (its whole process group): 130."""
    from dlagent_dev.progress import DagTestProgress, XComReader, format_event, headline

    out = out or sys.stdout
    progress = DagTestProgress()
    xcoms = XComReader(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    failed = []

    def on_line(line: str) -> None:
        for event in progress.feed(line):
            figure = ""
            if event.kind == "end" and event.state == "success":
                figure = headline(event.task_id, xcoms.return_value(progress.dag_id, progress.run_id, event.task_id,
                                                                     event.map_index))
            if event.failed:
                failed.append(event)
            for text in format_event(event, figure):
                print(text, file=out, flush=True)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = procs.start(command, env=env, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT)
    try:
        with stopped_by_signals():
            _follow(log_path, process, on_line)
    except KeyboardInterrupt:
        _shield_cleanup()
        print(f"\n[dlagent] interrupted: stopping the run (full log: {log_path})", file=out, flush=True)
        procs.stop_group(process)
        return 130, progress
    finally:
        xcoms.close()
        procs.stop_group(process)  # the run is over: nothing of it stays behind
    if process.returncode != 0 and not failed:  # it failed before any task did (e.g. a DAG import error): show the end
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        print("\n".join(f"[dlagent]   | {line[:300]}" for line in tail), file=out, flush=True)
    return process.returncode, progress


def run_pipeline(env: dict, conf: dict) -> int:
    """``airflow dags test`` of the pipeline, its output in a log file; one line per task here."""
    started_ms = int(time.time() * 1000)
    log_path = run_log_path(env)
    args = ["dags", "test", PIPELINE_DAG, "-c", json.dumps(conf)]
    print(f"[dlagent] running {PIPELINE_DAG} with conf {json.dumps(conf)}", flush=True)
    print(f"[dlagent] $ airflow {' '.join(shlex.quote(a) for a in args)}", flush=True)
    print(f"[dlagent] full log: {log_path}", flush=True)
    returncode, progress = follow_dag_test([executable("airflow"), *args], env, log_path)
    if returncode == 130:
        return returncode
    print(f"[dlagent] airflow dags test exited with {returncode}, DAG run {progress.run_state or 'state unknown'}", flush=True)
    return print_summary(env, conf.get("experiment_name", "dlagent"), started_ms, returncode, log_path=log_path)


def print_summary(env: dict, experiment: str, started_ms: int, returncode: int, *, log_path: Path | None = None) -> int:
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DLAGENT_", "MLFLOW_", "AIRFLOW_CONN_"))})
    from dlagent.hooks.mlflow import MLflowHook
    from dlagent.ml import mlflow_names as names

    hook = MLflowHook()
    client = hook.client
    experiment_obj = client.get_experiment_by_name(experiment)
    where = (f"{names.tag_equals(names.AIRFLOW_DAG_ID_TAG, PIPELINE_DAG)} and {names.tag_equals(names.KIND_TAG, names.KIND_PIPELINE)} "
             f"and attributes.start_time >= {started_ms}")
    runs = [] if experiment_obj is None else client.search_runs(
        [experiment_obj.experiment_id],
        filter_string=where,
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    print("\n" + "=" * 72)
    if not runs:
        print(f"[dlagent] no pipeline run was recorded in MLflow experiment {experiment!r} ({hook.tracking_uri}).")
        if log_path is not None:
            print(f"full log: {log_path}")
        return returncode or 1
    run = runs[0]
    metrics, status = run.data.metrics, run.info.status
    # the parent run's headline strings, written by the finish task as tags dlagent.<name>
    tags = {key[len(names.SUMMARY_TAG_PREFIX):]: value for key, value in run.data.tags.items() if key.startswith(names.SUMMARY_TAG_PREFIX)}
    print(f"dl_agent_pipeline: {status} (Airflow run {run.data.tags.get(names.AIRFLOW_RUN_ID_TAG)})")
    print(f"MLflow parent run:  {run.info.run_id} in experiment {experiment!r}")
    metric = tags.get("metric") or "accuracy"
    value = metrics.get("test_metric", metrics.get(f"test_{metric}"))
    if value is not None:
        baseline = metrics.get("baseline_test_metric")  # a predictor that never reads the inputs (the gate's floor)
        floor = f"; trivial predictor {baseline:.4f}" if baseline is not None else ""
        print(f"test {metric + ':':<15}{value:.4f}   (test loss {metrics.get('test_loss', float('nan')):.4f}{floor})")
    if tags.get("study_name"):
        best = metrics.get("tune_best_value")
        found = f"best val. value {best:.4f}" if best is not None and best == best else "no completed trial (n_trials 0, or all pruned or failed)"
        print(f"tuning:             study {tags['study_name']}, {found}")
    if tags.get("model_uri"):
        print(f"model:              {tags['model_uri']}  (training run {tags.get('train_run_id')})")
    if tags.get("candidate"):
        print(f"shipped candidate:  {tags['candidate']}, {metrics.get('candidate_size_bytes', 0):,.0f} bytes "
              f"(uncompressed Keras model: {metric} {metrics.get('keras_test_metric', metrics.get(f'keras_test_{metric}', float('nan'))):.4f})")
    if tags.get("agent_action"):
        followed = tags.get("followed")
        taken = f", branch taken: {followed}" if followed and followed != tags["agent_action"] else ""
        print(f"agent decided:      {tags['agent_action']}{taken}  (reasons: the agent_decide run's decisions.json)")
    if tags.get("deploy"):
        print(f"deploy:             {tags['deploy']}"[:400])
    elif tags.get("agent_action"):
        print("deploy:             not run: the registry is unchanged (why: the evaluate task's 'gate' lines, the agent's decisions.json)")
    if tags.get("champion_uri"):
        print(f"serve the champion: make serve   (mlflow models serve -m {tags['champion_uri']} --env-manager local)")
    print(f"tracking store:     {hook.tracking_uri}")
    if hook.tracking_uri.startswith("sqlite:"):
        print(f"artifacts:          {hook.artifact_location}")
        print(f"open the MLflow UI: make mlflow-ui   (or: mlflow ui --backend-store-uri {hook.tracking_uri} --port 5000)")
    if log_path is not None:
        print(f"full log:           {log_path}")
    print("=" * 72)
    return 0 if returncode == 0 and status == "FINISHED" else (returncode or 1)


def rollback_champion(env: dict, model_name: str, deploy_dir: str | None) -> int:
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DLAGENT_", "MLFLOW_", "AIRFLOW_CONN_"))})
    from dlagent.errors import ConfigError
    from dlagent.hooks.mlflow import MLflowHook
    from dlagent.operators.deploy import rollback_champion as rollback

    hook = MLflowHook()
    uri = hook.tracking_uri
    try:
        moved = rollback(hook.client, model_name, deploy_dir)
    except ConfigError as exc:
        print(f"[dlagent] rollback refused: {exc}", file=sys.stderr)
        return 1
    print(f"[dlagent] {model_name}: champion is now version {moved['champion']} (was {moved['rolled_back_from']}); "
          f"previous: {moved['previous']}; serving bundle {moved['bundle']} ({settings.redact_url(uri)})")
    return 0


def run_ui(env: dict, args) -> int:
    """Start the real services, print where they are, and keep them up until Ctrl-C (or SIGTERM,
    SIGHUP); then stop every one of them, each service's whole process group."""
    from dlagent_dev.stack import ADMIN_USER, LocalStack

    stack = LocalStack(env, airflow_port=args.airflow_port, mlflow_port=args.mlflow_port,
                       executor=args.executor, celery_workers=args.celery_workers)
    print(f"[dlagent] starting {', '.join(stack.commands())} (logs in {stack.log_dir})", flush=True)
    try:
        with stopped_by_signals():
            stack.start()
            print("\n" + "=" * 72)
            print(f"Airflow UI:  {stack.airflow_url}   login: {ADMIN_USER} / {stack.admin_password}")
            print(f"MLflow UI:   {stack.mlflow_url}   (backend store {settings.redact_url(stack.backend_store_uri)})")
            print(f"executor:    {stack.env['AIRFLOW__CORE__EXECUTOR']}; metadata DB {settings.redact_url(env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN'])}")
            print("trigger dl_agent_pipeline from its page (Trigger button: a form of the Params); Ctrl-C stops everything")
            print("=" * 72, flush=True)
            reported = {}
            while True:  # the stack's watchdog restarts a crashed service; say so here
                time.sleep(2.0)
                for name, count in stack.restarts.items():
                    if reported.get(name) != count:
                        print(f"[dlagent] {name} exited and was restarted ({count}x); see {stack.log_dir}/{name}.log", flush=True)
                        reported[name] = count
    except KeyboardInterrupt:
        print("\n[dlagent] stopping the services", flush=True)
    finally:
        _shield_cleanup()
        stack.stop()
    print("[dlagent] all services stopped", flush=True)
    return 0


def run_foreground(command: list[str], env: dict, *, tag: str) -> int:
    """Run a server in its own process group until it exits or Ctrl-C / SIGTERM / SIGHUP; then
    stop the whole group (MLflow's servers start workers of their own). What an earlier, killed
    run with the same ``tag`` left behind is stopped first, so the port is free."""
    stopped, owner = procs.stop_orphans(tag)
    if owner:
        raise SystemExit(f"[dlagent] already running, started by process {owner.split(':')[0]}: stop it first")
    if stopped:
        print(f"[dlagent] stopped {len(stopped)} process(es) an earlier, killed run left behind", flush=True)
    process = procs.start(command, env=env, tag=tag)
    try:
        with stopped_by_signals():
            return process.wait()
    except KeyboardInterrupt:
        print("\n[dlagent] stopping", flush=True)
        return 0
    finally:
        _shield_cleanup()
        procs.stop_group(process)


def _tracking_env(env: dict) -> dict:
    """The stack's environment with ``MLFLOW_TRACKING_URI`` set (the embedded store by default)."""
    uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(env['DLAGENT_HOME']) / 'mlflow' / 'mlflow.db'}"
    return {**env, "MLFLOW_TRACKING_URI": uri}


def run_mlflow_ui(env: dict, port: int) -> int:
    env = _tracking_env(env)
    uri = env["MLFLOW_TRACKING_URI"]
    print(f"[dlagent] MLflow UI on http://127.0.0.1:{port} for {settings.redact_url(uri)}", flush=True)
    command = [executable("mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    return run_foreground(command, env, tag=f"mlflow-ui:{env['DLAGENT_HOME']}:{port}")


def run_serve(env: dict, model_name: str, port: int) -> int:
    env = _tracking_env(env)
    model = f"models:/{model_name}@champion"
    print(f"[dlagent] serving {model} from {settings.redact_url(env['MLFLOW_TRACKING_URI'])} on http://127.0.0.1:{port}",
          flush=True)
    command = [executable("mlflow"), "models", "serve", "-m", model, "--env-manager", "local", "--host", "127.0.0.1",
               "--port", str(port)]
    return run_foreground(command, env, tag=f"serve:{env['DLAGENT_HOME']}:{port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dlagent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="prepare the embedded stack")
    run = sub.add_parser("run", help="run dl_agent_pipeline end to end")
    run.add_argument("--conf", default=os.environ.get("DLAGENT_CONF", "{}"), help="JSON conf for the DAG run (the trigger form's fields)")
    sub.add_parser("env", help="print the stack's environment as shell exports")
    rollback = sub.add_parser("rollback", help="move alias 'champion' back to 'previous' and redeploy the serving bundle")
    rollback.add_argument("--model-name", default="dlagent-classifier", help="registered model (default: dlagent-classifier)")
    rollback.add_argument("--deploy-dir", default=None, help="serving bundle folder (default: $DLAGENT_HOME/deploy)")
    ui = sub.add_parser("ui", help="start Airflow (api-server, scheduler, dag-processor, triggerer) and an MLflow server")
    ui.add_argument("--airflow-port", type=int, default=int(os.environ.get("DLAGENT_AIRFLOW_PORT", 8080)))
    ui.add_argument("--mlflow-port", type=int, default=int(os.environ.get("DLAGENT_MLFLOW_PORT", 5000)))
    ui.add_argument("--executor", choices=("LocalExecutor", "CeleryExecutor"), default="LocalExecutor")
    ui.add_argument("--celery-workers", type=int, default=2, help="Celery workers to start with CeleryExecutor")
    mlflow_ui = sub.add_parser("mlflow-ui", help="the MLflow UI on the stack's tracking store")
    mlflow_ui.add_argument("--port", type=int, default=5000)
    serve = sub.add_parser("serve", help="serve models:/NAME@champion over HTTP (POST /invocations)")
    serve.add_argument("--model-name", default="dlagent-classifier")
    serve.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    env = stack_env()
    if args.command == "env":
        for name in sorted(k for k in env if k.startswith(("DLAGENT_", "AIRFLOW", "MLFLOW_"))):
            print(f"export {name}={shlex.quote(env[name])}")
        return 0
    if args.command == "rollback":
        return rollback_champion(env, args.model_name, args.deploy_dir)
    if args.command == "mlflow-ui":
        return run_mlflow_ui(env, args.port)
    if args.command == "serve":
        return run_serve(env, args.model_name, args.port)
    setup(env)
    if args.command == "run":
        try:
            conf = json.loads(args.conf)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"[dlagent] --conf is not valid JSON: {exc}. Fix: pass e.g. '{{\"epochs\": 5}}'.") from exc
        if not isinstance(conf, dict):
            raise SystemExit("[dlagent] --conf must be a JSON object such as '{\"epochs\": 5}'.")
        return run_pipeline(env, conf)
    if args.command == "ui":
        return run_ui(env, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
