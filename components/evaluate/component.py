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
        metrics: Accuracy, macro precision/recall/F1, ROC AUC, recall gap.
        confusion: The confusion matrix, drawn by the Kubeflow UI.
        report: HTML report with plots and the most confident mistakes.
        evaluation: Full metrics and gate decision (JSON) for packaging.
        registry_uri: Registry to find the production model in (empty: thresholds only).
        model_name: Registered model name.
        min_accuracy: Lowest acceptable accuracy.
        min_macro_f1: Lowest acceptable macro F1.
        max_recall_gap: Largest acceptable gap between per-class recalls (bias check).
        champion_tolerance: How much worse than production the candidate may be.
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
