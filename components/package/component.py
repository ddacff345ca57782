"""KFP component: ONNX packaging with a parity check and a model card."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def package_model(
    model: Input[Model],
    test: Input[Dataset],
    evaluation: Input[Artifact],
    package: Output[Model],
    model_name: str = "pet-classifier",
):
    """Exports the model to ONNX, checks it, verifies parity on the test split, writes the card.

    Args:
        model: The trained (and blessed) model.
        test: The test split, for the parity check.
        evaluation: The evaluation JSON, for the model card.
        package: model.onnx (probabilities and embedding outputs), metadata.json,
            MODEL_CARD.md and the PyTorch weights (torch/).
        model_name: Registered model name.
    """
    import json
    import logging

    from components.ingest.shards import split_images
    from components.ingest.snapshot import read_split
    from components.package import core
    from components.train.core import load_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch_model, meta = load_model(model.path)
    rows, split = read_split(test.path)
    with open(evaluation.path) as f:
        result = json.load(f)
    metadata = core.build_package(torch_model, meta, result,
                                  split_images(rows, meta["image_size"],
                                               split["dataset_version"]), model_name,
                                  package.path)
    package.metadata.update({"framework": "onnx", "opset": metadata["opset"],
                             "model_version": metadata["model_version"],
                             "dataset_version": metadata["dataset_version"],
                             "parity_max_abs_diff": metadata["parity"]["max_abs_diff"],
                             "embedding_dim": metadata["embedding_dim"]})
