"""KFP component: data ingestion. A thin wrapper over :mod:`components.ingest.core`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def ingest_data(
    data_uri: str,
    dataset_root: str,
    train: Output[Dataset],
    test: Output[Dataset],
    report: Output[Markdown],
    report_page: Output[HTML],
    metrics: Output[Metrics],
    labels_csv: str = "",
    layout: str = "auto",
    test_fraction: float = 0.2,
    workers: int = 0,
    use_cache: bool = True,
    classes: str = "cats,dogs",
    label_aliases: str = "",
    draft: bool = True,
    plan_id: str = "",
    dataset_version: str = "",
) -> NamedTuple("IngestOutputs", dataset_version=str, num_train=int, num_test=int):
    """Ingests a data lake into a validated, de-duplicated, split and versioned dataset.

    Args:
        data_uri: The data lake: s3://bucket/prefix (credentials from the environment) or a
            local path.
        dataset_root: Where dataset snapshots are published (s3://… or a path).
        train: The training split: its manifest, readable image URIs and statistics.
        test: The test split, likewise.
        report: Counts, quarantine reasons and per-split statistics for people (Markdown,
            rendered by the Kubeflow UI).
        report_page: The same report as an HTML page, for a browser.
        metrics: Counts as scalar metrics.
        labels_csv: Optional URI of a CSV of key,label; empty means labels from the layout.
        layout: auto, folders, kaggle or csv.
        test_fraction: Share of each class in the test split.
        workers: Parallel reads and decodes: worker processes for a large lake, threads for a
            small one; 0 is one per CPU core available to the step.
        use_cache: Skip re-decoding objects unchanged since the last ingestion with the same
            validation settings.
        classes: The declared classes, comma-separated (case-insensitive). Any other label
            quarantines its image as unknown_label.
        label_aliases: Other names of the classes, as alias=class pairs (cat=cats,dog=dogs);
            empty means the default aliases cat=cats and dog=dogs for those classes.
        draft: Decode large JPEGs at a reduced scale (still completely) to validate them and
            measure their statistics faster.
        plan_id: The publish step of a fanned-out ingestion: the plan whose parts
            (ingest_part) already read the lake; empty for a single-step ingestion.
        dataset_version: A version already published under ``dataset_root``: its splits are
            passed on as published and the lake is not read (``data_uri`` and the ingestion
            options are then unused); empty ingests the lake.
    """
    import logging

    from components.ingest import core, snapshot
    from components.ingest.report import report_html, report_markdown

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if dataset_version:
        result = snapshot.published_result(dataset_root, dataset_version)
        data_uri = result.report["source_uri"]
    else:
        result = core.ingest(data_uri, dataset_root, core.IngestConfig(
            test_fraction=test_fraction, layout=layout, labels_csv=labels_csv or None,
            workers=workers, use_cache=use_cache, classes=core.parse_classes(classes),
            aliases=core.parse_aliases(label_aliases), draft=draft), plan_id=plan_id)
    for name, artifact in (("train", train), ("test", test)):
        artifact.metadata.update(snapshot.write_split(result, name, artifact.path))
    report.metadata.update({"dataset_version": result.version, "source_uri": data_uri})
    with open(report.path, "w") as f:
        f.write(report_markdown(result))
    report_page.metadata.update(report.metadata)
    with open(report_page.path, "w") as f:
        f.write(report_html(result))
    for key in ("listed", "ingested", "quarantined", "duplicates"):
        metrics.log_metric(key, result.report[key])
    outputs = NamedTuple("IngestOutputs", dataset_version=str, num_train=int, num_test=int)
    return outputs(result.version, int(train.metadata["count"]), int(test.metadata["count"]))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def plan_ingest_parts(
    data_uri: str,
    dataset_root: str,
    parts: int = 4,
    labels_csv: str = "",
    draft: bool = True,
) -> NamedTuple("IngestPlan", plan_id=str, parts=list, num_parts=int):
    """Splits a data lake into key ranges of about equal bytes, one per ingest_part pod.

    Args:
        data_uri: The data lake (s3://bucket/prefix or a local path).
        dataset_root: The dataset root the parts and the publish step write to.
        parts: How many parts at most (fewer for a lake with fewer objects).
        labels_csv: The labels CSV of the ingestion, if any (not an image of the lake).
        draft: Must match the parts and the publish step (part of the validation settings).

    Returns:
        plan_id: For the publish step (ingest_data's plan_id).
        parts: One part per item, each as JSON text, to fan out over (dsl.ParallelFor; a
            list of strings, because KFP 2.16 types a loop item as a string).
        num_parts: How many parts were planned.
    """
    import json
    import logging

    from components.ingest import core, fanout

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    plan = fanout.plan_parts(data_uri, dataset_root, parts, core.IngestConfig(
        labels_csv=labels_csv or None, draft=draft))
    outputs = NamedTuple("IngestPlan", plan_id=str, parts=list, num_parts=int)
    return outputs(plan["plan_id"], [json.dumps(p, sort_keys=True) for p in plan["parts"]],
                   len(plan["parts"]))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def ingest_part(
    data_uri: str,
    dataset_root: str,
    part: str,
    labels_csv: str = "",
    layout: str = "auto",
    workers: int = 0,
    use_cache: bool = True,
    classes: str = "cats,dogs",
    label_aliases: str = "",
    draft: bool = True,
) -> NamedTuple("IngestPartOutputs", objects=int, decoded=int):
    """Reads, validates, hashes and stores one key range of a plan; publishes nothing.

    Args:
        data_uri: The data lake, as given to plan_ingest_parts.
        dataset_root: The dataset root, likewise.
        part: One item of plan_ingest_parts's parts (JSON text).
        labels_csv: Optional URI of a CSV of key,label (as for ingest_data).
        layout: auto, folders, kaggle or csv.
        workers: Parallel reads and decodes in this pod; 0 is one per CPU core it may use.
        use_cache: Skip objects unchanged since an earlier ingestion (or an earlier attempt
            of this part) under the same validation settings.
        classes: The declared classes, comma-separated.
        label_aliases: alias=class pairs; empty means the default aliases.
        draft: Decode large JPEGs at a reduced scale (still completely).

    Returns:
        objects: Objects listed in the range.
        decoded: Objects read and decoded by this run of the part.
    """
    import logging

    from components.ingest import core, fanout

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = fanout.ingest_part(data_uri, dataset_root, part, core.IngestConfig(
        layout=layout, labels_csv=labels_csv or None, workers=workers, use_cache=use_cache,
        classes=core.parse_classes(classes), aliases=core.parse_aliases(label_aliases),
        draft=draft))
    outputs = NamedTuple("IngestPartOutputs", objects=int, decoded=int)
    return outputs(summary["objects"], summary["decoded"])
