"""The pipelines of the collection, by the name the CLI uses."""

import importlib

#: CLI name -> (module, pipeline function).
PIPELINES = {
    "ingest": ("pipelines.ingest", "ingest_pipeline"),
    "ingest-fanout": ("pipelines.ingest", "ingest_fanout_pipeline"),
    "training": ("pipelines.training", "training_pipeline"),
    "continuous-training": ("pipelines.continuous_training", "continuous_training_pipeline"),
    "monitoring": ("pipelines.monitoring", "monitoring_pipeline"),
}


def load(name: str):
    """Returns the pipeline function registered under ``name``."""
    if name not in PIPELINES:
        raise KeyError(f"Unknown pipeline: {name!r}. Expect one of {sorted(PIPELINES)}.")
    module, attr = PIPELINES[name]
    return getattr(importlib.import_module(module), attr)
