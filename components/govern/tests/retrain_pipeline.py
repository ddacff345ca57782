"""A small real KFP pipeline the launcher tests run under kfp.local in place of the
continuous-training pipeline (which takes minutes): it receives the trigger like the real
one and writes it where the test can read it."""

from kfp import dsl


@dsl.component(base_image="python:3.11")
def record_trigger(trigger: str, out_file: str) -> str:
    import json
    import pathlib

    data = json.loads(trigger)
    pathlib.Path(out_file).write_text(json.dumps(data))
    return data["verdict"]


@dsl.pipeline(name="retrain-stand-in")
def retrain_stand_in(trigger: str = "{}", out_file: str = "/tmp/trigger.json") -> str:
    """Records the trigger it was started with.

    Args:
        trigger: The governance trigger (JSON): episode, verdict, checks.
        out_file: Where to write it.
    """
    return record_trigger(trigger=trigger, out_file=out_file).output


@dsl.component(base_image="python:3.11")
def drifting_verdict(verdict: dsl.Output[dsl.Artifact]):
    """Writes a verdict as monitor_window does: one drifting window of version 3."""
    import json

    with open(verdict.path, "w") as f:
        json.dump({"model": "pet-classifier", "model_version": "3",
                   "window_start": "2026-11-20T00:00:00+00:00",
                   "window_end": "2026-11-20T01:00:00+00:00", "run_id": "kfp-local-w1",
                   "n_requests": 300, "n_labelled": 0, "report_uri": "", "status": "alarm",
                   "created": "2026-11-20T01:00:05+00:00",
                   "checks": [{"name": "drift.embedding", "kind": "drift", "value": 0.001,
                               "threshold": 0.05, "status": "alarm", "detail": "moved",
                               "evidence": "", "extra": {}}]}, f)


@dsl.pipeline(name="govern-stand-in")
def govern_stand_in(monitoring_uri: str, registry_uri: str) -> int:
    """A verdict, then the govern step as the monitoring pipeline runs it.

    Args:
        monitoring_uri: The monitoring store.
        registry_uri: The model registry.
    """
    from pipelines.steps import govern_verdict

    made = drifting_verdict()
    return govern_verdict(verdict=made.outputs["verdict"], monitoring_uri=monitoring_uri,
                          registry_uri=registry_uri).outputs["alerts"]
