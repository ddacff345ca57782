"""The data-ingestion pipeline: one step, runnable alone to version a data lake."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown

from components.ingest.component import ingest_data
from pipelines.common import never_cached, with_resources, with_storage_credentials


@dsl.pipeline(
    name="pet-data-ingestion",
    description="Validates, de-duplicates, splits and versions a pet-park image data lake.",
)
def ingest_pipeline(
    data_uri: str,
    dataset_root: str,
    labels_csv: str = "",
    layout: str = "auto",
    test_fraction: float = 0.2,
    workers: int = 0,
    classes: str = "cats,dogs",
    label_aliases: str = "",
) -> NamedTuple("IngestPipelineOutputs", dataset_version=str, train=Dataset, test=Dataset,
                report=Markdown):
    """Ingests a data lake into a versioned dataset.

    Args:
        data_uri: The data lake, s3://bucket/prefix or a local path.
        dataset_root: Where dataset snapshots are published.
        labels_csv: Optional URI of a key,label CSV; empty takes labels from the layout.
        layout: auto, folders, kaggle or csv.
        test_fraction: Share of each class in the test split (0.2 = 80/20).
        workers: Parallel reads and decodes (processes for a large lake); 0 is one per core.
        classes: The declared classes, comma-separated; other labels are quarantined.
        label_aliases: alias=class pairs (cat=cats,dog=dogs); empty means those defaults.
    """
    task = ingest_data(data_uri=data_uri, dataset_root=dataset_root, labels_csv=labels_csv,
                       layout=layout, test_fraction=test_fraction, workers=workers,
                       classes=classes, label_aliases=label_aliases)
    task.set_display_name("ingest data")
    with_resources(task, "1", "2G", "2", "8G", retries=2)
    never_cached(task)  # the lake may have changed at the same URI
    with_storage_credentials(task)
    outputs = NamedTuple("IngestPipelineOutputs", dataset_version=str, train=Dataset,
                         test=Dataset, report=Markdown)
    return outputs(task.outputs["dataset_version"], task.outputs["train"],
                   task.outputs["test"], task.outputs["report"])
