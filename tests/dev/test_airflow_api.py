"""``AirflowApi.set_run_state`` against a small HTTP server that answers as Airflow's API server
did when its update of a DAG run deadlocked with the scheduler on PostgreSQL (a 500 "Database
error"; the race itself cannot be produced on demand): the PATCH is tried again, other errors
are not."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dlagent_dev.airflow_api import AirflowApi

DATABASE_ERROR = {"detail": {"reason": "Database error", "statement": "hidden", "orig_error": "hidden",
                             "message": "Serious error when handling your request. Check logs for more details"}}


def _server(answers: list[tuple[int, dict]]):
    """A server that gives a token, then answers each PATCH with the next of ``answers``; ``patches`` counts them."""
    patches = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict):
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            self._reply(201, {"access_token": "t"})

        def do_PATCH(self):  # noqa: N802
            patches.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self._reply(*answers[min(len(patches), len(answers)) - 1])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, patches


@pytest.mark.parametrize("answers, expected_patches, raises", [
    ([(500, DATABASE_ERROR), (200, {"state": "failed"})], 2, None),
    ([(500, DATABASE_ERROR)], 3, "Database error"),  # every attempt refused: the last error is raised
    ([(500, {"detail": "something else"}), (200, {"state": "failed"})], 1, "something else"),  # not a database error: at once
    ([(404, {"detail": "not found"})], 1, "HTTP 404"),
])
def test_set_run_state_tries_a_database_error_again_and_nothing_else(answers, expected_patches, raises):
    server, patches = _server(answers)
    try:
        api = AirflowApi(f"http://127.0.0.1:{server.server_address[1]}", "admin", "secret")
        if raises is None:
            assert api.set_run_state("dag", "run 1", "failed", attempts=3, wait=0.01) == {"state": "failed"}
        else:
            with pytest.raises(RuntimeError, match=raises):
                api.set_run_state("dag", "run 1", "failed", attempts=3, wait=0.01)
        assert patches == [{"state": "failed"}] * expected_patches
    finally:
        server.shutdown()
        server.server_close()
