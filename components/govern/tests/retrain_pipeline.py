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
