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
