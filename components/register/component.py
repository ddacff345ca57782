"""KFP component: register a package with its lineage."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def register_model(
    package: Input[Model],
    model: Input[Model],
    evaluation: Input[Artifact],
    train: Input[Dataset],
    registry_uri: str,
    model_name: str = "pet-classifier",
    alias: str = "staging",
    pipeline_run: str = "",
    reference_sample: int = 1000,
    lineage_extra: str = "",
) -> NamedTuple("RegisterOutputs", version=int, uri=str):
    """Publishes the package as a new immutable registry version with its lineage.

    Args:
        package: The ONNX package folder.
        model: The trained model (for its hyperparameters and training history).
        evaluation: Test metrics and the gate decision.
        train: The training split (for the dataset version and snapshot).
        registry_uri: The registry root (s3://… or a path).
        model_name: Registered model name.
        alias: Alias to point at the new version (empty for none).
        pipeline_run: The pipeline run that produced it.
        reference_sample: Most test-split images in the version's monitoring
            reference (embeddings, statistics, drift detector); 0 for none.
        lineage_extra: JSON object of further lineage (e.g. the verdict that triggered a
            retraining run, the production data export); empty for none.
    """
    import json
    import logging

    from components.register import core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    mv = core.register_package(package.path, model.path, evaluation.path, train.path,
                               registry_uri, model_name, alias, pipeline_run,
                               reference_sample,
                               json.loads(lineage_extra) if lineage_extra else None)
    outputs = NamedTuple("RegisterOutputs", version=int, uri=str)
    return outputs(mv.version, mv.uri)
