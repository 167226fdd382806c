"""``dlagent.agent`` is pure: importing it loads no Airflow (nor Keras, TensorFlow, MLflow, Optuna)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import PROJECT_DIR

MODULES = ["dlagent.agent", "dlagent.agent.plan", "dlagent.agent.observe", "dlagent.agent.curves", "dlagent.agent.resources",
           "dlagent.agent.runs", "dlagent.agent.policies",
           "dlagent.agent.policies.rules", "dlagent.agent.policies.learning", "dlagent.agent.controller", "dlagent.agent.federated",
           "dlagent.ml.conditions"]


def test_agent_imports_nothing_heavy():
    code = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "from dlagent.agent.plan import validate_plan\n"
        "validate_plan({'action': 'stop', 'reasons': [], 'controller': {}, 'train': {'epochs': 3}})\n"
        "heavy = ('airflow', 'keras', 'tensorflow', 'mlflow', 'optuna')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
