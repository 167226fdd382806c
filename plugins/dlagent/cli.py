"""``dlagent`` command line: set up the embedded local stack and run the pipeline on it.

``python -m dlagent.cli setup``   prepare ``$DLAGENT_HOME`` (Airflow home + metadata DB, MLflow store)
``python -m dlagent.cli run``     run ``dl_agent_pipeline`` end to end and print a summary
``python -m dlagent.cli env``     print the environment the stack uses (``eval $(... env)``)
``python -m dlagent.cli rollback`` move the registry alias ``champion`` back to ``previous`` and redeploy
``python -m dlagent.cli ui``      start the real services (Airflow UI/API, scheduler, ..., MLflow server)

Every step is idempotent and says what it does. A configured PostgreSQL
(``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) or MLflow server (``MLFLOW_TRACKING_URI`` or the
``mlflow_default`` Connection) is used instead of the embedded SQLite stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from dlagent import settings

PROJECT_DIR = Path(os.environ.get("DLAGENT_PROJECT_DIR") or Path(__file__).resolve().parents[2])
PIPELINE_DAG = "dl_agent_pipeline"


def stack_env(base: dict | None = None) -> dict:
    """The environment for Airflow commands on the embedded stack (explicit settings win)."""
    env = dict(os.environ if base is None else base)
    home = Path(env["DLAGENT_HOME"]).resolve() if env.get("DLAGENT_HOME") else settings.dlagent_home()
    env["DLAGENT_HOME"] = str(home)
    env.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_DIR / "dags"))
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(PROJECT_DIR / "plugins"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{Path(env['AIRFLOW_HOME']) / 'airflow.db'}")
    env.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "60")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine unasked
    env.setdefault("PYTHONPATH", str(PROJECT_DIR / "plugins"))
    return env


def _airflow(args: list[str], env: dict, *, quiet: bool = False) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    print(f"[dlagent] $ airflow {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return subprocess.run(command, env=env, cwd=PROJECT_DIR, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)


def setup(env: dict) -> None:
    home = Path(env["DLAGENT_HOME"])
    for folder in (home, Path(env["AIRFLOW_HOME"]), settings.local_mlflow_dir(), settings.local_optuna_dir()):
        folder.mkdir(parents=True, exist_ok=True)
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    print(f"[dlagent] home {home}\n[dlagent] Airflow home {env['AIRFLOW_HOME']}, metadata DB {settings.redact_url(db)}", flush=True)
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists() and marker.read_text() == db:
        print("[dlagent] Airflow metadata DB already migrated", flush=True)
        return
    result = _airflow(["db", "migrate"], env, quiet=True)
    if result.returncode != 0:
        print(result.stdout, file=sys.stderr)
        raise SystemExit(f"[dlagent] 'airflow db migrate' failed (exit {result.returncode})")
    marker.write_text(db)
    print("[dlagent] Airflow metadata DB migrated", flush=True)


def run_pipeline(env: dict, conf: dict) -> int:
    started_ms = int(time.time() * 1000)
    print(f"[dlagent] running {PIPELINE_DAG} with conf {json.dumps(conf)}", flush=True)
    result = _airflow(["dags", "test", PIPELINE_DAG, "-c", json.dumps(conf)], env)
    return print_summary(env, conf.get("experiment_name", "dlagent"), started_ms, result.returncode)


def print_summary(env: dict, experiment: str, started_ms: int, returncode: int) -> int:
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DLAGENT_", "MLFLOW_", "AIRFLOW_CONN_"))})
    from dlagent.hooks.mlflow import MLflowHook

    hook = MLflowHook()
    client = hook.client
    experiment_obj = client.get_experiment_by_name(experiment)
    runs = [] if experiment_obj is None else client.search_runs(
        [experiment_obj.experiment_id],
        filter_string=f"tags.`airflow.dag_id` = '{PIPELINE_DAG}' and tags.`dlagent.kind` = 'pipeline' and attributes.start_time >= {started_ms}",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    print("\n" + "=" * 72)
    if not runs:
        print(f"[dlagent] no pipeline run was recorded in MLflow experiment {experiment!r} ({hook.tracking_uri}).")
        return returncode or 1
    run = runs[0]
    metrics, tags = run.data.metrics, run.data.tags
    status = run.info.status
    print(f"dl_agent_pipeline: {status} (Airflow run {tags.get('airflow.run_id')})")
    print(f"MLflow parent run:  {run.info.run_id} in experiment {experiment!r}")
    if "test_accuracy" in metrics:
        print(f"test accuracy:      {metrics['test_accuracy']:.4f}   (test loss {metrics.get('test_loss', float('nan')):.4f})")
    if tags.get("dlagent.study_name"):
        print(f"tuning:             study {tags['dlagent.study_name']}, best val. value {metrics.get('tune_best_value', float('nan')):.4f}")
    if tags.get("dlagent.model_uri"):
        print(f"model:              {tags['dlagent.model_uri']}  (training run {tags.get('dlagent.train_run_id')})")
    if tags.get("dlagent.candidate"):
        print(f"shipped candidate:  {tags['dlagent.candidate']}, {metrics.get('candidate_size_bytes', 0):,.0f} bytes "
              f"(uncompressed Keras model: accuracy {metrics.get('keras_test_accuracy', float('nan')):.4f})")
    if tags.get("dlagent.agent_action"):
        followed = tags.get("dlagent.followed")
        taken = f", branch taken: {followed}" if followed and followed != tags["dlagent.agent_action"] else ""
        print(f"agent decided:      {tags['dlagent.agent_action']}{taken}  (reasons: the agent_decide run's decisions.json)")
    if tags.get("dlagent.deploy"):
        print(f"deploy:             {tags['dlagent.deploy']}"[:400])
    elif tags.get("dlagent.agent_action"):
        print("deploy:             not run: the deployed champion stays")
    if tags.get("dlagent.champion_uri"):
        print(f"serve the champion: make serve   (mlflow models serve -m {tags['dlagent.champion_uri']} --env-manager local)")
    print(f"tracking store:     {hook.tracking_uri}")
    if hook.tracking_uri.startswith("sqlite:"):
        print(f"artifacts:          {hook.artifact_location}")
        print(f"open the MLflow UI: make mlflow-ui   (or: mlflow ui --backend-store-uri {hook.tracking_uri} --port 5000)")
    print("=" * 72)
    return 0 if returncode == 0 and status == "FINISHED" else (returncode or 1)


def rollback_champion(env: dict, model_name: str, deploy_dir: str | None) -> int:
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DLAGENT_", "MLFLOW_", "AIRFLOW_CONN_"))})
    from dlagent.errors import ConfigError
    from dlagent.hooks.mlflow import MLflowHook
    from dlagent.operators.deploy import rollback_champion as rollback

    uri = MLflowHook().tracking_uri
    try:
        moved = rollback(uri, model_name, deploy_dir)
    except ConfigError as exc:
        print(f"[dlagent] rollback refused: {exc}", file=sys.stderr)
        return 1
    print(f"[dlagent] {model_name}: champion is now version {moved['champion']} (was {moved['rolled_back_from']}); "
          f"previous: {moved['previous']}; serving bundle {moved['bundle']} ({settings.redact_url(uri)})")
    return 0


def run_ui(env: dict, args) -> int:
    """Start the real services, print where they are, and keep them up until Ctrl-C."""
    from dlagent.stack import ADMIN_USER, LocalStack

    stack = LocalStack(env, airflow_port=args.airflow_port, mlflow_port=args.mlflow_port,
                       executor=args.executor, celery_workers=args.celery_workers)
    print(f"[dlagent] starting {', '.join(stack.commands())} (logs in {stack.log_dir})", flush=True)
    with stack:
        print("\n" + "=" * 72)
        print(f"Airflow UI:  {stack.airflow_url}   login: {ADMIN_USER} / {stack.admin_password}")
        print(f"MLflow UI:   {stack.mlflow_url}   (backend store {settings.redact_url(stack.backend_store_uri)})")
        print(f"executor:    {stack.executor}; metadata DB {settings.redact_url(env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN'])}")
        print("trigger dl_agent_pipeline from its page (Trigger button: a form of the Params); Ctrl-C stops everything")
        print("=" * 72, flush=True)
        try:
            reported = {}
            while True:  # the stack's watchdog restarts a crashed service; say so here
                time.sleep(2.0)
                for name, count in stack.restarts.items():
                    if reported.get(name) != count:
                        print(f"[dlagent] {name} exited and was restarted ({count}x); see {stack.log_dir}/{name}.log", flush=True)
                        reported[name] = count
        except KeyboardInterrupt:
            print("\n[dlagent] stopping the services", flush=True)
    return 0


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
    args = parser.parse_args(argv)
    env = stack_env()
    if args.command == "env":
        for name in sorted(k for k in env if k.startswith(("DLAGENT_", "AIRFLOW", "MLFLOW_"))):
            print(f"export {name}={shlex.quote(env[name])}")
        return 0
    if args.command == "rollback":
        return rollback_champion(env, args.model_name, args.deploy_dir)
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
