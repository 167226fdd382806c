"""A LocalStack whose services are small HTTP servers, driven by the real ``make ui`` code
(``cli.run_ui``): the fake MLflow server has a helper process (as ``mlflow server`` has uvicorn
workers); the fake api-server renames itself with setproctitle, as Airflow's does.

    python -m tests.dev.fake_stack HOME AIRFLOW_PORT MLFLOW_PORT

prints what ``make ui`` prints and runs until Ctrl-C, SIGTERM or SIGHUP (or SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import sys

from dlagent_dev import cli, stack
from dlagent_dev.env import stack_env

SERVICE = """
import http.server, subprocess, sys
if len(sys.argv) > 2:  # rename itself as Airflow's api-server does: /proc/<pid>/environ no longer shows the tag
    import setproctitle
    setproctitle.setproctitle(f"fake {sys.argv[2]} -- port:{sys.argv[1]}")
else:
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # fake-stack-helper"])
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""
IDLE = "import time; time.sleep(600)  # fake-stack-scheduler"


class FakeStack(stack.LocalStack):
    def commands(self) -> dict[str, list[str]]:
        return {"mlflow": ["python", "-c", SERVICE, str(self.mlflow_port)],
                "api-server": ["python", "-c", SERVICE, str(self.airflow_port), "api_server"],
                "scheduler": ["python", "-c", IDLE]}


def fake_env(home: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DLAGENT_HOME", "MLFLOW_"))}
    return stack_env({**base, "DLAGENT_HOME": home})


def main(argv: list[str]) -> int:
    home, airflow_port, mlflow_port = argv
    stack.LocalStack = FakeStack  # what run_ui builds
    args = argparse.Namespace(airflow_port=int(airflow_port), mlflow_port=int(mlflow_port), executor="LocalExecutor",
                              celery_workers=0)
    return cli.run_ui(fake_env(home), args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
