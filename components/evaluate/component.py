"""KFP component: model testing with a quality gate."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    test: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    registry_uri: str = "",
    model_name: str = "pet-classifier",
    min_accuracy: float = 0.9,
    min_macro_f1: float = 0.9,
    max_recall_gap: float = 0.1,
    champion_tolerance: float = 0.0,
) -> None:
    """Tests the model on the test split and decides whether it passes every gate rule.

    The decision and its reasons are in ``evaluation`` (``gate``); the ``quality_gate`` step
    turns it into the pipeline's branch.

    Args:
        model: The trained model.
        test: The test split.
        metrics: Accuracy, macro precision/recall/F1, ROC AUC, recall gap, and each
            context's accuracy (``context_<name>_accuracy``, ``_production``, ``_images``).
        confusion: The confusion matrix, drawn by the Kubeflow UI.
        report: HTML report with plots and the most confident mistakes.
        evaluation: Full metrics and gate decision (JSON) for packaging.
        registry_uri: Registry to find the production model in (empty: thresholds only).
        model_name: Registered model name.
        min_accuracy: Lowest acceptable accuracy.
        min_macro_f1: Lowest acceptable macro F1.
        max_recall_gap: Largest acceptable gap between per-class recalls (bias check).
        champion_tolerance: How much worse than production the candidate may be, overall
            and on the test images of any one context (day, night).
    """
    import json
    import logging

    from components.evaluate import core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = core.evaluate(model.path, test.path, core.GateConfig(
        min_accuracy, min_macro_f1, max_recall_gap, champion_tolerance), registry_uri,
        model_name)
    m, gate = result["metrics"], result["gate"]
    for key, value in (("accuracy", m["accuracy"]), ("macro_precision", m["macro"]["precision"]),
                       ("macro_recall", m["macro"]["recall"]), ("macro_f1", m["macro"]["f1"]),
                       ("roc_auc", m["roc_auc"]), ("recall_gap", gate["bias"]["recall_gap"])):
        metrics.log_metric(key, value)
    for name, values in m["per_class"].items():
        metrics.log_metric(f"recall_{name}", values["recall"])
    for ctx, row in gate["contexts"].items():  # each context's accuracy (day, night)
        metrics.log_metric(f"context_{ctx}_images", row["images"])
        metrics.log_metric(f"context_{ctx}_accuracy", row["challenger"])
        if row["champion"] is not None:
            metrics.log_metric(f"context_{ctx}_accuracy_production", row["champion"])
    confusion.log_confusion_matrix(m["classes"], m["confusion_matrix"])
    with open(report.path, "w") as f:
        f.write(result["report_html"])
    with open(evaluation.path, "w") as f:
        json.dump({"metrics": m, "gate": gate, "dataset_version": result["dataset_version"]}, f,
                  indent=2)
    summary = ("blessed" if gate["blessed"] else "not blessed: " + "; ".join(gate["reasons"]))
    evaluation.metadata.update({"blessed": gate["blessed"], "accuracy": m["accuracy"],
                                "gate": summary})
    logging.info("Quality gate: %s", summary)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def quality_gate(evaluation: Input[Artifact]) -> bool:
    """Stops an unblessed model before packaging and registering, and says why.

    A separate step with one output because kfp.local 2.16 resolves a ``dsl.If`` condition
    only on a task whose single output is the condition.

    Args:
        evaluation: The evaluation JSON of ``evaluate_model``.

    Returns:
        True if the model is blessed.
    """
    import json
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(evaluation.path) as f:
        gate = json.load(f)["gate"]
    if gate["blessed"]:
        logging.info("Blessed: the model passes every rule of the quality gate.")
    else:
        for reason in gate["reasons"]:
            logging.warning("Not blessed: %s", reason)
        logging.warning("The model will not be packaged or registered.")
    return bool(gate["blessed"])


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_challenger(
    model: Input[Model],
    test: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    registry_uri: str = "",
    model_name: str = "pet-classifier",
    min_accuracy: float = 0.9,
    min_macro_f1: float = 0.9,
    max_recall_gap: float = 0.1,
    champion_tolerance: float = 0.0,
    min_recent_gain: float = 0.0,
    max_reference_drop: float = 0.02,
    min_recent_images: int = 10,
) -> None:
    """Tests a retrained model and the production model on the same test split, by slice.

    The recent-production slice (test images exported from production captures) is reported
    apart from the rest. Blessed only if the usual gate passes, the challenger is not worse
    than production overall (``champion_tolerance``) nor on the earlier data or the test
    images of any context, day or night (``max_reference_drop``), and better on the recent
    slice (``min_recent_gain``).

    Args:
        model: The retrained model.
        test: The test split (with the exported production images in it).
        metrics: Overall metrics, recent-slice accuracy of both models, and each context's
            (``context_<name>_accuracy_challenger``/``_champion``, ``context_<name>_images``).
        confusion: The challenger's confusion matrix.
        report: HTML report with the slice table.
        evaluation: Full metrics, slices and the gate decision (JSON).
        registry_uri: Registry to find the production model (the champion) in.
        model_name: Registered model name.
        min_accuracy: Lowest acceptable overall accuracy.
        min_macro_f1: Lowest acceptable macro F1.
        max_recall_gap: Largest acceptable gap between per-class recalls.
        champion_tolerance: How much worse than production overall the challenger may be.
        min_recent_gain: By how much the challenger must beat production on the recent slice.
        max_reference_drop: How much worse than production on the earlier data, and on the
            test images of any one context, it may be.
        min_recent_images: Fewest recent-production test images to judge a gain on.
    """
    import json
    import logging

    from components.evaluate import challenger, core

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = challenger.evaluate_challenger(
        model.path, test.path,
        core.GateConfig(min_accuracy, min_macro_f1, max_recall_gap, champion_tolerance),
        challenger.ChallengerConfig(min_recent_gain=min_recent_gain,
                                    max_overall_drop=champion_tolerance,
                                    max_reference_drop=max_reference_drop,
                                    min_recent_images=min_recent_images,
                                    max_context_drop=max_reference_drop),
        registry_uri, model_name)
    m, gate = result["metrics"], result["gate"]
    for key, value in (("accuracy", m["accuracy"]), ("macro_f1", m["macro"]["f1"]),
                       ("roc_auc", m["roc_auc"]), ("recall_gap", gate["bias"]["recall_gap"]),
                       ("recent_images", gate["recent"]["recent_images"])):
        metrics.log_metric(key, value)
    for name in ("overall", "recent", "reference"):
        acc = gate["recent"].get(f"{name}_accuracy")
        if acc:
            metrics.log_metric(f"{name}_accuracy_challenger", acc["challenger"])
            metrics.log_metric(f"{name}_accuracy_champion", acc["champion"])
    for ctx, row in gate["contexts"].items():
        metrics.log_metric(f"context_{ctx}_images", row["images"])
        metrics.log_metric(f"context_{ctx}_accuracy_challenger", row["challenger"])
        if row["champion"] is not None:
            metrics.log_metric(f"context_{ctx}_accuracy_champion", row["champion"])
    confusion.log_confusion_matrix(m["classes"], m["confusion_matrix"])
    with open(report.path, "w") as f:
        f.write(result["report_html"])
    with open(evaluation.path, "w") as f:
        json.dump({"metrics": m, "gate": gate, "dataset_version": result["dataset_version"],
                   "slices": result["slices"]}, f, indent=2)
    summary = ("blessed" if gate["blessed"] else "not blessed: " + "; ".join(gate["reasons"]))
    evaluation.metadata.update({"blessed": gate["blessed"], "accuracy": m["accuracy"],
                                "gate": summary, "recent": gate["recent"]})
    logging.info("Champion/challenger gate: %s", summary)
