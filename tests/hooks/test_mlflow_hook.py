"""Where the MLflow hook points, from Connections and the environment."""

from __future__ import annotations

from dlagent.hooks.mlflow import MLflowHook


def test_connection_wins_over_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/ignored.db")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", "http://mlflow.internal:5001")
    assert MLflowHook().tracking_uri == "http://mlflow.internal:5001"
    assert MLflowHook().artifact_location is None  # a server chooses its own artifact root


def test_connection_extra_tracking_uri_and_artifact_location(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_CUSTOM",
        '{"conn_type": "mlflow", "extra": {"tracking_uri": "https://ml.example:443", "artifact_location": "s3://b/p"}}',
    )
    hook = MLflowHook(mlflow_conn_id="mlflow_custom")
    assert (hook.tracking_uri, hook.artifact_location) == ("https://ml.example:443", "s3://b/p")


def test_environment_then_embedded_store(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert MLflowHook().tracking_uri == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("DLAGENT_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("DLAGENT_HOME", str(tmp_path))
    hook = MLflowHook()
    assert hook.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert hook.artifact_location == str(tmp_path / "mlflow" / "artifacts")


def test_test_connection_reports_reachability(mlflow_uri, monkeypatch):
    assert MLflowHook().test_connection()[0] is True
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    ok, message = MLflowHook().test_connection()
    assert ok is False and "127.0.0.1:9" in message


def test_the_client_sends_the_connections_login_without_touching_the_environment(monkeypatch):
    """Basic auth from the Connection reaches the server as a header; os.environ and MLflow's global URI stay as they were."""
    import base64
    import json
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import mlflow

    seen: list[tuple[str, str | None]] = []

    class Server(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self._answer()

        def do_POST(self):  # noqa: N802
            self._answer()

        def _answer(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"experiments": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_AUTH", json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": port, "login": "alice", "password": "s3cret:/@x"}))
        before_env, before_uri = dict(os.environ), mlflow.get_tracking_uri()
        hook = MLflowHook(mlflow_conn_id="mlflow_auth")
        ok, message = hook.test_connection()
        assert ok, message
        assert "s3cret" not in message and "s3cret" not in hook.tracking_uri  # the shown URI carries no password
        path, authorization = seen[-1]
        assert path.startswith("/api/2.0/mlflow/experiments/search")
        assert authorization == "Basic " + base64.b64encode(b"alice:s3cret:/@x").decode()
        assert dict(os.environ) == before_env and mlflow.get_tracking_uri() == before_uri
        assert MLflowHook(mlflow_conn_id="mlflow_auth").client is not hook.client  # one client per hook
    finally:
        server.shutdown()
        server.server_close()
