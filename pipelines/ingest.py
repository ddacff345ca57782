"""The data-ingestion pipelines: one step (runs anywhere, kfp.local included), or fanned out
over several pods for a large lake (cluster only: kfp.local 2.16 cannot run a ParallelFor)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown

from components.ingest.component import ingest_data, ingest_part, plan_ingest_parts
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
                report=Markdown, report_page=HTML):
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
                         test=Dataset, report=Markdown, report_page=HTML)
    return outputs(task.outputs["dataset_version"], task.outputs["train"],
                   task.outputs["test"], task.outputs["report"], task.outputs["report_page"])


#: How many part pods of one fanned-out ingestion run at the same time (a compile-time
#: setting: ``dsl.ParallelFor`` takes a number, not a pipeline parameter).
FANOUT_PARALLELISM = 8


@dsl.pipeline(
    name="pet-data-ingestion-fanout",
    description="Ingests a large pet-park image lake over several pods (one per key range) "
                "and publishes one dataset version, the same as a single-step ingestion.",
)
def ingest_fanout_pipeline(
    data_uri: str,
    dataset_root: str,
    parts: int = 8,
    labels_csv: str = "",
    layout: str = "auto",
    test_fraction: float = 0.2,
    workers: int = 0,
    classes: str = "cats,dogs",
    label_aliases: str = "",
) -> NamedTuple("IngestFanoutOutputs", dataset_version=str, train=Dataset, test=Dataset,
                report=Markdown, report_page=HTML):
    """Plans key ranges, ingests each in its own pod, then publishes once.

    Args:
        data_uri: The data lake, s3://bucket/prefix (a local path only with a shared volume).
        dataset_root: Where dataset snapshots are published.
        parts: How many key ranges (pods); at most FANOUT_PARALLELISM run at once.
        labels_csv: Optional URI of a key,label CSV; empty takes labels from the layout.
        layout: auto, folders, kaggle or csv.
        test_fraction: Share of each class in the test split (0.2 = 80/20).
        workers: Decoding processes in each pod; 0 is one per CPU core of the pod.
        classes: The declared classes, comma-separated; other labels are quarantined.
        label_aliases: alias=class pairs (cat=cats,dog=dogs); empty means those defaults.
    """
    plan = plan_ingest_parts(data_uri=data_uri, dataset_root=dataset_root, parts=parts,
                             labels_csv=labels_csv)
    plan.set_display_name("plan ingest parts")
    with_resources(plan, "500m", "1G", "1", "4G", retries=2)
    with dsl.ParallelFor(plan.outputs["parts"], parallelism=FANOUT_PARALLELISM,
                         name="ingest-parts") as part:
        reader = ingest_part(data_uri=data_uri, dataset_root=dataset_root, part=part,
                             labels_csv=labels_csv, layout=layout, workers=workers,
                             classes=classes, label_aliases=label_aliases)
        reader.set_display_name("ingest part")
        with_resources(reader, "2", "2G", "2", "8G", retries=2)
    publish = ingest_data(data_uri=data_uri, dataset_root=dataset_root, labels_csv=labels_csv,
                          layout=layout, test_fraction=test_fraction, workers=workers,
                          classes=classes, label_aliases=label_aliases,
                          plan_id=plan.outputs["plan_id"]).after(reader)
    publish.set_display_name("publish dataset version")
    with_resources(publish, "1", "2G", "2", "8G", retries=2)
    for task in (plan, reader, publish):
        never_cached(task)  # the lake may have changed at the same URI
        with_storage_credentials(task)
    outputs = NamedTuple("IngestFanoutOutputs", dataset_version=str, train=Dataset,
                         test=Dataset, report=Markdown, report_page=HTML)
    return outputs(publish.outputs["dataset_version"], publish.outputs["train"],
                   publish.outputs["test"], publish.outputs["report"],
                   publish.outputs["report_page"])
