"""The Airflow plugin entry point (``airflow.plugins``): registers dlagent with Airflow."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class DlagentPlugin(AirflowPlugin):
    name = "dlagent"
