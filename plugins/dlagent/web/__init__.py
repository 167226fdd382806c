"""The dlagent pages in the Airflow api-server: each DAG run's agent decisions and tuning study.

``dlagent.plugin`` mounts :data:`app` at ``/dlagent`` (``AirflowPlugin.fastapi_apps``). The
plugin is loaded by every Airflow process (scheduler, workers, DAG processor...), so this module
imports nothing heavy: :class:`LazyApp` builds the FastAPI app (:func:`dlagent.web.app.create_app`,
which imports FastAPI and Airflow's security module; MLflow is imported in the request handlers)
on the first request the api-server routes to it.
"""

from __future__ import annotations

import threading


class LazyApp:
    """An ASGI app that imports and builds the real one on first use."""

    def __init__(self, factory: str = "dlagent.web.app:create_app"):
        self.factory = factory
        self._app = None
        self._lock = threading.Lock()

    def get(self):
        """The built app (built now if it was not yet)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    import importlib

                    module, _, name = self.factory.partition(":")
                    self._app = getattr(importlib.import_module(module), name)()
        return self._app

    async def __call__(self, scope, receive, send):
        await self.get()(scope, receive, send)


#: The app the plugin mounts.
app = LazyApp()
