"""The plugin package never depends on the developer tooling: Airflow loads ``plugins/dlagent``
(and the DAGs) in every process; ``dev/dlagent_dev`` (the local services, the command line)
is not installed there."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR

LOADED_BY_AIRFLOW = sorted([*(PROJECT_DIR / "plugins").rglob("*.py"), *(PROJECT_DIR / "dags").rglob("*.py")])


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from dlagent_dev import cli`
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            names.update(arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str))
    return names


def test_the_files_airflow_loads_are_there():
    assert PROJECT_DIR / "plugins" / "dlagent" / "plugin.py" in LOADED_BY_AIRFLOW
    assert not (PROJECT_DIR / "plugins" / "dlagent" / "stack.py").exists()
    assert not (PROJECT_DIR / "plugins" / "dlagent" / "cli.py").exists()


@pytest.mark.parametrize("path", LOADED_BY_AIRFLOW, ids=lambda p: str(p.relative_to(PROJECT_DIR)))
def test_no_module_airflow_loads_imports_the_developer_tooling(path):
    offending = {name for name in _imported_modules(path) if name == "dlagent_dev" or name.startswith("dlagent_dev.")}
    assert not offending, f"{path.relative_to(PROJECT_DIR)} imports {sorted(offending)}: plugin code must not need dev/"


def test_importing_the_plugin_imports_nothing_of_the_developer_tooling():
    code = ("import sys; import dlagent.plugin, dlagent.links, dlagent.operators.base; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dlagent_dev'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=PROJECT_DIR)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_developer_tooling_has_no_import_cycle():
    """env is what cli and stack share; neither imports the other at module level."""
    for name in ("env", "procs", "progress", "stack", "pytest_guard"):
        assert "dlagent_dev.cli" not in _imported_modules(PROJECT_DIR / "dev" / "dlagent_dev" / f"{name}.py"), name
    for name in ("env", "procs", "progress"):
        assert "dlagent_dev.stack" not in _imported_modules(PROJECT_DIR / "dev" / "dlagent_dev" / f"{name}.py"), name
