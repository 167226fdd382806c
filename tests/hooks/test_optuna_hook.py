"""Where the Optuna hook puts the study, and that a real PostgreSQL Connection works."""

from __future__ import annotations

from dlagent.hooks.optuna import OptunaHook


def test_postgres_connection_becomes_a_psycopg2_url(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_OPTUNA_DEFAULT", "postgres://tuner:s%40cret@db.internal:5433/studies")
    assert OptunaHook().storage_url == "postgresql+psycopg2://tuner:s%40cret@db.internal:5433/studies"


def test_extra_storage_url_then_environment_then_embedded_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_OPTUNA_X", '{"conn_type": "generic", "extra": {"storage_url": "sqlite:////tmp/x.db"}}')
    assert OptunaHook(optuna_conn_id="optuna_x").storage_url == "sqlite:////tmp/x.db"
    monkeypatch.delenv("AIRFLOW_CONN_OPTUNA_DEFAULT", raising=False)
    monkeypatch.setenv("DLAGENT_OPTUNA_STORAGE", "sqlite:////tmp/y.db")
    assert OptunaHook().storage_url == "sqlite:////tmp/y.db"
    monkeypatch.delenv("DLAGENT_OPTUNA_STORAGE")
    monkeypatch.setenv("DLAGENT_HOME", str(tmp_path))
    assert OptunaHook().storage_url == f"sqlite:///{tmp_path / 'optuna' / 'optuna.db'}"


def test_test_connection_on_real_postgresql(monkeypatch, postgres_url):
    monkeypatch.setenv("DLAGENT_OPTUNA_STORAGE", postgres_url)
    assert OptunaHook().test_connection() == (True, "study storage answered.")
    monkeypatch.setenv("DLAGENT_OPTUNA_STORAGE", "postgresql+psycopg2://postgres@127.0.0.1:1/none")
    ok, message = OptunaHook().test_connection()
    assert ok is False and "OperationalError" in message
