"""KFP steps whose body launches pipelines: they are defined here, in the pipelines layer.

A step room never imports ``pipelines/``, but a step that starts another pipeline (the govern
step starts continuous training through a launcher of :mod:`pipelines.launchers`) needs it in
its KFP body. Its plain logic stays in its room (``components/govern/core.py``); only the
``@dsl.component`` wrapper lives here.

``govern_verdict``: govern one monitoring verdict, the monitoring pipeline's last step. A thin
wrapper over :mod:`components.govern.core`: reads the verdict artifact written by
``components.monitor.component.monitor_window`` and applies the governance policy.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.settings import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def govern_verdict(
    verdict: Input[Artifact],
    monitoring_uri: str,
    registry_uri: str,
    actions: Output[Markdown],
    model_name: str = "pet-classifier",
    policy: str = "",
    deploy_target: str = "none",
    namespace: str = "",
    serving_root: str = "",
    launcher: str = "none",
    kfp_host: str = "",
    retrain_arguments: str = "{}",
) -> NamedTuple("GovernOutputs", alerts=int, retrain_started=bool, rolled_back=bool,
                held=bool):
    """Applies the governance policy to a verdict: alerts, rollback, hold, retraining.

    Args:
        verdict: The monitoring verdict (JSON) of ``monitor_window``.
        monitoring_uri: The monitoring store; governance records go under
            ``governance/<model>/``.
        registry_uri: The model registry (holds, rollbacks).
        actions: What was done and why, for the Kubeflow UI.
        model_name: Registered model name.
        policy: The policy: empty for the default (the pet park's), a URI of a YAML file
            (s3://…, file://… or a path), or the YAML itself.
        deploy_target: Where production runs, for rollbacks: kserve, local or none.
        namespace: Kubernetes namespace of the InferenceServices (kserve) and KFP runs.
        serving_root: State folder of the local target.
        launcher: How retraining starts: kfp (submit the continuous-training pipeline to
            ``kfp_host``), local (kfp.local on this machine) or none (record the trigger).
        kfp_host: The KFP API, e.g. http://ml-pipeline.kubeflow:8888 inside the cluster.
        retrain_arguments: JSON object of arguments for the continuous-training pipeline
            besides the model, registry and monitoring store, which this step passes: at
            least ``data_uri``, ``dataset_root`` and ``work_root``.
    """
    import json
    import logging
    import os
    import tempfile
    from collections import namedtuple

    import yaml

    from components.govern import core
    from components.govern.policy import load_policy, parse_policy
    from pipelines.launchers import open_launcher

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not policy:  # the pet park's default, applied to this pipeline's model
        import dataclasses

        pol = dataclasses.replace(load_policy(), model=model_name)
    elif policy.startswith(("s3://", "file://", "/")):
        from components.common.storage import read_uri

        pol = parse_policy(yaml.safe_load(read_uri(policy)), policy)
    else:
        pol = parse_policy(yaml.safe_load(policy), "the policy parameter")
    with open(verdict.path) as f:
        v = core.load_verdict(json.load(f))
    target = None
    if deploy_target != "none":
        from components.deploy.targets import open_target

        target = open_target(deploy_target, registry_uri, model_name, namespace=namespace,
                             state_dir=serving_root)
    args = {"model_name": model_name, "registry_uri": registry_uri,
            "monitoring_uri": monitoring_uri, **json.loads(retrain_arguments or "{}")}
    run_launcher = open_launcher(launcher, args, kfp_host=kfp_host, namespace=namespace or None,
                                 runs_root=os.path.join(tempfile.gettempdir(), "retraining"),
                                 pipeline=pol.retrain.pipeline,
                                 trigger_argument=pol.retrain.trigger_argument)
    taken = core.govern(v, pol, store_uri=monitoring_uri, registry_uri=registry_uri,
                        target=target, launcher=run_launcher,
                        verdict_uri=v.report_uri)
    lines = [f"# Governance of verdict {v.run_id} ({v.status})", "",
             f"{model_name} version {v.model_version}, window {v.window_start} – "
             f"{v.window_end}", "", "| action | rule | check | detail |", "|---|---|---|---|"]
    lines += [f"| {a['action']} | {a.get('rule', '')} | {a.get('check', '')} | "
              f"{str(a.get('detail', '')).replace('|', '/')} |" for a in taken]
    if not taken:
        lines.append("| none | | | nothing in the policy matched |")
    with open(actions.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    kinds = [a["action"] for a in taken]
    actions.metadata.update({"actions": kinds, "verdict": v.run_id})
    out = namedtuple("GovernOutputs", ["alerts", "retrain_started", "rolled_back", "held"])
    return out(kinds.count("alert"), "retrain" in kinds, "rollback" in kinds, "hold" in kinds)
