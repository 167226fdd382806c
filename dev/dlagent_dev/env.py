"""Where the project is and the environment of the embedded local stack.

What both the command line (:mod:`dlagent_dev.cli`) and the local services
(:mod:`dlagent_dev.stack`) need, so neither imports the other for it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from dlagent import settings

#: The checkout: dags/, plugins/, dev/ (``DLAGENT_PROJECT_DIR`` overrides it).
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


def executable(program: str) -> str:
    """A program of this virtual environment (``airflow``, ``mlflow``), beside the interpreter."""
    return str(Path(sys.executable).with_name(program))


def airflow(args: list[str], env: dict, *, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run ``airflow ARGS`` to completion, saying so; ``quiet`` captures its output."""
    print(f"[dlagent] $ airflow {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return subprocess.run([executable("airflow"), *args], env=env, cwd=PROJECT_DIR, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)


def setup(env: dict) -> None:
    """Prepare ``$DLAGENT_HOME``: the folders and a migrated Airflow metadata DB (once per DB URL)."""
    home = Path(env["DLAGENT_HOME"])
    for folder in (home, Path(env["AIRFLOW_HOME"]), home / "mlflow", home / "optuna"):
        folder.mkdir(parents=True, exist_ok=True)
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    print(f"[dlagent] home {home}\n[dlagent] Airflow home {env['AIRFLOW_HOME']}, metadata DB {settings.redact_url(db)}", flush=True)
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists() and marker.read_text() == db:
        print("[dlagent] Airflow metadata DB already migrated", flush=True)
        return
    result = airflow(["db", "migrate"], env, quiet=True)
    if result.returncode != 0:
        print(result.stdout, file=sys.stderr)
        raise SystemExit(f"[dlagent] 'airflow db migrate' failed (exit {result.returncode})")
    marker.write_text(db)
    print("[dlagent] Airflow metadata DB migrated", flush=True)
