"""KFP components of the continuous-training pipeline: export production data, warm start,
activate the released version's monitoring reference."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def export_production_data(
    monitoring_uri: str,
    data_uri: str,
    registry_uri: str,
    export: Output[Artifact],
    summary: Output[Markdown],
    model_name: str = "pet-classifier",
    trigger: str = "",
    since: float = 0.0,
    min_images: int = 1,
    since_episode: bool = True,
) -> NamedTuple("ExportOutputs", export_id=str, exported=int, lineage=str):
    """Copies the labelled production captures that are new since the production model's data
    into the lake, as a new versioned prefix, and publishes their provenance.

    Args:
        monitoring_uri: The monitoring store (capture records, images, labels).
        data_uri: The data lake the next ingestion reads; exports go to
            ``<label>/production/<export_id>/`` in it.
        registry_uri: The registry (the production version's classes and dataset).
        export: The export's counts, skipped instances and provenance URI (JSON).
        summary: The same for people.
        model_name: Registered model name.
        trigger: What started the run (governance's trigger JSON, or a reason).
        since: Only captures from this unix time on (0: all).
        min_images: Fewer new labelled images than this exports nothing and ends the run
            here, with an error that begins "Nothing new to train on" and says why (the
            local launcher records the run as ``nothing_new``); 0 retrains on the lake even
            with nothing new.
        since_episode: With no ``since``, a governance trigger exports the captures since
            production was last judged normal (the end of the last window without the
            episode's alarms, else the start of the window that opened the episode): the
            changed data. False exports every new capture.

    Returns:
        The export id ("" when nothing new), the number of images exported, and the lineage
        JSON (trigger and production data) for the register step.
    """
    import json
    import logging

    from components.monitor.export import export_captures
    from components.retrain.core import (
        NothingToRetrainError,
        export_since,
        lineage_record,
        nothing_new_message,
    )

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = export_captures(monitoring_uri, data_uri, model_name, registry_uri,
                             since=export_since(trigger, since, since_episode,
                                                monitoring_uri),
                             min_images=min_images)
    info = {**result.summary(), "skipped": result.skipped}
    with open(export.path, "w") as f:
        json.dump(info, f, indent=2, default=str)
    export.metadata.update({k: v for k, v in result.summary().items()
                            if k not in ("counts", "lake_prefixes")})
    export.metadata["exported"] = result.counts["exported"]
    lines = [f"# Production data export {result.export_id or '(nothing new)'}", "",
             f"Production version {result.production_version}, dataset "
             f"`{result.production_dataset}`", "", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.counts.items()]
    if result.lake_prefixes:
        lines += ["", "Lake prefixes: " + ", ".join(f"`{p}`" for p in result.lake_prefixes),
                  "", f"Provenance: `{result.manifest_uri}`"]
    with open(summary.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if min_images > 0 and result.counts["exported"] < min_images:
        # Nothing new: the run ends here, before ingesting and training (the model would
        # learn nothing production has not), saying why and what would give it images.
        raise NothingToRetrainError(nothing_new_message(result.counts, min_images))
    lineage = lineage_record(trigger, result.summary())
    outputs = NamedTuple("ExportOutputs", export_id=str, exported=int, lineage=str)
    return outputs(result.export_id, int(result.counts["exported"]),
                   json.dumps(lineage, default=str))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def warm_start(
    registry_uri: str,
    work_root: str,
    run_id: str,
    search_space: str,
    model_name: str = "pet-classifier",
    enabled: bool = True,
    image_size: int = 0,
) -> NamedTuple("WarmStart", search_space=str, image_size=int):
    """The search space, starting every trial from the production model's PyTorch weights,
    and the input size to train at.

    Without production weights (none registered, or a version packaged before they were)
    the space is returned unchanged and training starts from scratch; the log says why.

    Args:
        registry_uri: The registry.
        work_root: Scratch storage; the verified weights are copied to
            ``<work_root>/ct/<run_id>/warm_start.pt``.
        run_id: The pipeline run.
        search_space: JSON: hyperparameter -> candidate values.
        model_name: Registered model name.
        enabled: False trains from scratch.
        image_size: Network input side in pixels; 0 is production's (its lineage).

    Returns:
        The search space JSON for the trials, and the input side they train at.
    """
    import logging

    from components.common.storage import open_store
    from components.retrain.core import warm_start_space

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = open_store(work_root).child(f"ct/{run_id}").uri
    space, decision = warm_start_space(search_space, registry_uri, model_name, work, enabled,
                                       image_size)
    logging.info("Warm start: %s", decision)
    outputs = NamedTuple("WarmStart", search_space=str, image_size=int)
    return outputs(space, int(decision["image_size"]))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def activate_reference(
    registry_uri: str,
    version: int,
    decision: str,
    monitoring_uri: str,
    activation: Output[Artifact],
    model_name: str = "pet-classifier",
    trigger: str = "",
) -> bool:
    """Makes the released version's monitoring reference the active one, after a release.

    Args:
        registry_uri: The registry.
        version: The released version.
        decision: The release decision (promoted, deployed, unchanged, rolled_back).
        monitoring_uri: The monitoring store (its governance audit log records this).
        activation: What was decided (JSON).
        model_name: Registered model name.
        trigger: What started the run, recorded with the release.

    Returns:
        True when the version is in production and its reference is active.
    """
    import json
    import logging

    from components.retrain.core import activate_reference as activate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = activate(registry_uri, model_name, version, decision, monitoring_uri, trigger)
    with open(activation.path, "w") as f:
        json.dump(result, f, indent=2)
    activation.metadata.update(result)
    return bool(result["active"])


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def record_rejection(
    evaluation: Input[Artifact],
    monitoring_uri: str,
    rejection: Output[Artifact],
    model_name: str = "pet-classifier",
    trigger: str = "",
) -> None:
    """Records in the governance audit log that the retrained model was not blessed, and why;
    production is untouched.

    Args:
        evaluation: The champion/challenger evaluation.
        monitoring_uri: The monitoring store (its governance audit log).
        rejection: The record (JSON).
        model_name: Registered model name.
        trigger: What started the run.
    """
    import json
    import logging

    from components.retrain.core import record_rejection as record

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(evaluation.path) as f:
        result = record(json.load(f), monitoring_uri, model_name, trigger, evaluation.uri)
    with open(rejection.path, "w") as f:
        json.dump(result, f, indent=2, default=str)
    rejection.metadata.update({"blessed": False, "reasons": result["reasons"]})
