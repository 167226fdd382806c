"""The conf of a retraining run: the form's settings, updated by what the new data says."""

from __future__ import annotations

import json
from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.operators.base import DlagentOperator


class RetrainConfOperator(DlagentOperator):
    """Build and check the ``conf`` of the ``dl_agent_pipeline`` run a retraining triggers.

    A scheduled run retrains with ``settings`` (the retrain DAG's Params). A run started by
    an update of the training-data Asset also takes the ``conf`` mapping from the
    triggering asset events' ``extra`` (the latest event wins), so whoever publishes new
    data says what changed, e.g. ``{"conf": {"dataset": "npz:/data/2026-11.npz"}}``; other
    keys of ``extra`` are left alone. The result is checked against the pipeline's Params
    here, so a bad value fails this task naming the field, before anything is triggered.

    :param settings: the base conf (templated; the DAG passes its Params).
    Returns the conf.
    """

    template_fields: Sequence[str] = ("experiment_name", "settings")
    template_fields_renderers = {"settings": "json"}
    ui_color = "#e6f7e6"

    def __init__(self, *, settings: dict, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings

    def execute(self, context):
        return super().execute(context)["conf"]

    def run(self, context):
        from dlagent.params import check_pipeline_conf

        if not isinstance(self.settings, dict):
            raise ConfigError("settings", f"must be a JSON object, got {type(self.settings).__name__}.",
                              "pass the pipeline Params as a mapping.")
        conf = {name: value for name, value in self.settings.items() if value is not None}
        sources = []
        for asset, events in (context.get("triggering_asset_events") or {}).items():
            for event in sorted(events, key=lambda e: e.timestamp):
                update = (event.extra or {}).get("conf")
                if update is None:
                    continue
                if not isinstance(update, dict):
                    raise ConfigError(f"asset event extra.conf ({asset.uri})", f"must be a JSON object, got {type(update).__name__}.",
                                      'publish the event with extra {"conf": {"dataset": "..."}}.')
                check_pipeline_conf(update, field=f"asset event extra.conf ({asset.uri})",
                                    fix="publish the event with pipeline Params only (see dl_agent_pipeline's trigger form).")
                conf.update(update)
                sources.append(f"{asset.uri} at {event.timestamp.isoformat()}: {json.dumps(update, sort_keys=True)}")
        check_pipeline_conf(conf)
        for source in sources:
            self.log.info("new data: %s", source)
        self.log.info("conf for dl_agent_pipeline: %s", json.dumps(conf, sort_keys=True))
        return {"conf": conf, "asset_updates": len(sources)}
