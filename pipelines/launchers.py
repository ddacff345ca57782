"""The retraining launchers governance is given: how a retraining run starts.

:class:`LocalLauncher` runs the continuous-training pipeline under ``kfp.local`` in a process
of its own (this module's ``--run-local``); :class:`KfpLauncher` submits the compiled
pipeline to a Kubeflow Pipelines API through
``kfp.Client.create_run_from_pipeline_package``. :func:`open_launcher` is the one place a
launcher kind is named (``mlops govern --launcher``, the govern step's ``launcher``).
Governance itself only knows :class:`components.govern.trigger.RetrainLauncher`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

from components.common.records import now_iso
from components.govern.trigger import LaunchError, RetrainLauncher
from pipelines import PIPELINES, load
from pipelines.local import PipelineFailed, run_local
from pipelines.runs import RunRecorder

logger = logging.getLogger(__name__)

#: The launcher kinds, by the name the CLI and the govern step take.
LAUNCHER_KINDS = ("none", "local", "kfp")


def _pipeline_name(name: str) -> str:
    """A name in ``pipelines.PIPELINES``, or ``module:function`` of any pipeline."""
    if ":" in name:
        return name
    for candidate in (name, name.replace("-", "_"), name.replace("_", "-")):
        if candidate in PIPELINES:
            return candidate
    raise LaunchError(f"No pipeline {name!r} to retrain with (known: {sorted(PIPELINES)}). "
                      "Set retrain.pipeline in the policy.")


def retraining_arguments(pipeline: str, arguments: dict) -> dict:
    """The arguments of a retraining run, completed with how production was trained.

    A continuous-training run retrains the production model: where the arguments do not say,
    it reads production's lake with the ingestion options its dataset was ingested with (a
    labels CSV, the layout, the classes and aliases, the test fraction) and trains at its
    input size (``components.retrain.core.production_training_options``; its lineage). Given
    arguments win; another lake than production's gets only the input size.
    """
    if not arguments.get("registry_uri") or _pipeline_name(pipeline) != "continuous-training":
        return dict(arguments)
    # deferred: components.settings, which `mlops compile` sets first (the CLI imports this
    # module's LAUNCHER_KINDS while it builds its parser)
    from components.retrain.core import production_training_options  # deferred: see above
    known = production_training_options(arguments["registry_uri"],
                                        arguments.get("model_name", "pet-classifier"),
                                        arguments.get("data_uri", ""))
    return {**known, **arguments}


def _alive(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


class LocalLauncher(RetrainLauncher):
    """Runs a pipeline under ``kfp.local`` (``pipelines.local.run_local``) in its own process.

    The process writes ``result.json`` into its run folder when the pipeline ends, so later
    govern runs (other processes) can tell whether it is still going.

    Args:
        arguments: The pipeline's arguments; the trigger is added under ``trigger_argument``.
        runs_root: Folder for the runs' logs, results and kfp.local outputs.
        pipeline: A name in ``pipelines.PIPELINES``.
        wait: Wait for the run to end (a demo) instead of returning once it started.
    """

    kind = "local"

    def __init__(self, arguments: dict, runs_root: str | os.PathLike,
                 pipeline: str = "continuous-training", trigger_argument: str = "trigger",
                 wait: bool = False, timeout_s: float | None = None,
                 records_dir: str | os.PathLike | None = None):
        self.arguments = dict(arguments)
        self.runs_root = Path(runs_root)
        self.pipeline = pipeline
        self.trigger_argument = trigger_argument
        self.wait = wait
        self.timeout_s = timeout_s
        self.records_dir = records_dir

    def launch(self, trigger: dict) -> dict:
        name = _pipeline_name(self.pipeline)
        run_id = f"local-{trigger.get('episode', 'manual')}-{uuid.uuid4().hex[:8]}"
        run_dir = (self.runs_root / run_id).resolve()
        run_dir.mkdir(parents=True)
        arguments = retraining_arguments(name, self.arguments)
        spec = {"pipeline": name, "pipeline_root": str(run_dir / "outputs"),
                "arguments": {**arguments, self.trigger_argument: json.dumps(trigger)},
                "result": str(run_dir / "result.json"),
                "records_dir": str(self.records_dir) if self.records_dir else ""}
        (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
        with open(run_dir / "run.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipelines.launchers", "--run-local",
                 str(run_dir / "spec.json")], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=not self.wait)
        launch = {"run_id": run_id, "url": run_dir.as_uri(), "launcher": self.kind,
                  "pid": proc.pid, "run_dir": str(run_dir), "state": "running"}
        logger.info("Started %s locally as %s (pid %d, log %s)", name, run_id, proc.pid,
                    run_dir / "run.log")
        if self.wait:
            try:
                proc.wait(self.timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Run %s still going after %s s; leaving it running", run_id,
                               self.timeout_s)
            launch["state"] = self.state(launch)
        return launch

    def state(self, launch: dict) -> str:
        run_dir = Path(launch.get("run_dir", ""))
        result = run_dir / "result.json"
        if result.is_file():
            return json.loads(result.read_text()).get("state", "unknown")
        if _alive(int(launch.get("pid", 0)), str(run_dir)):
            return "running"
        return "failed" if run_dir.is_dir() else "unknown"


def run_local_spec(spec_path: str) -> int:
    """The local launcher's process: runs one pipeline and writes its result file."""
    spec = json.loads(Path(spec_path).read_text())
    result: dict = {"started": now_iso()}
    # The tasks' output goes to the run's log through run_local's reader, which names the
    # step that failed and its own error (kfp.local's message names neither).
    log = Path(spec_path).parent / "run.log"
    try:
        if ":" in spec["pipeline"]:  # module:function, e.g. a pipeline outside the collection
            PIPELINES[spec["pipeline"]] = tuple(spec["pipeline"].split(":", 1))
        if spec.get("records_dir"):  # listed by `mlops runs`, its reports with .html names
            recorder = RunRecorder(spec["records_dir"], spec["pipeline"], spec["arguments"],
                                   str(Path(spec_path).parent / "run.log"),
                                   spec["pipeline_root"])
            result["run_record"] = recorder.record["run_id"]  # `mlops runs show`, failed too
            with recorder:
                outputs = run_local(spec["pipeline"], spec["arguments"],
                                    spec["pipeline_root"], log_path=log)
                recorder.outputs = outputs
        else:
            outputs = run_local(spec["pipeline"], spec["arguments"], spec["pipeline_root"],
                                log_path=log)
        result.update(state="succeeded", outputs={
            k: (v if isinstance(v, str | int | float | bool) or v is None
                else getattr(v, "uri", str(v))) for k, v in outputs.items()})
    except PipelineFailed as exc:
        from components.retrain.core import NOTHING_NEW  # deferred: see retraining_arguments

        if exc.error.startswith(NOTHING_NEW):  # the export found nothing new: not trained
            logger.warning("The run ended before training: %s", exc.error)
            result.update(state="nothing_new", error=exc.error)
        else:
            logger.exception("The pipeline run failed")
            result.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - any failure of the run is its result
        logger.exception("The pipeline run failed")
        result.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    result["ended"] = now_iso()
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, spec["result"])
    return 0 if result["state"] in ("succeeded", "nothing_new") else 1


_KFP_RUNNING = {"PENDING", "RUNNING", "PAUSED", "CANCELING", "RUNTIME_STATE_UNSPECIFIED"}
_KFP_DONE = {"SUCCEEDED": "succeeded", "SKIPPED": "succeeded", "FAILED": "failed",
             "CANCELED": "failed"}


class KfpLauncher(RetrainLauncher):
    """Submits the compiled continuous-training pipeline to a Kubeflow Pipelines API.

    Args:
        host: The KFP API (``http://ml-pipeline.kubeflow:8888`` from inside the cluster);
            empty: kfp.Client's in-cluster default. A projected service-account token at
            ``KF_PIPELINES_SA_TOKEN_PATH`` (multi-user Kubeflow) is used when present.
        package_path: The compiled pipeline YAML (``mlops compile``); empty: ``pipeline`` is
            compiled from the code that runs (in a pipeline step: the image's own).
        arguments: The pipeline's arguments; the trigger is added under ``trigger_argument``.
        experiment: The KFP experiment the runs go to.
        namespace: The profile namespace (multi-user Kubeflow).
        client: A ``kfp.Client`` (default: one for ``host``).
        pipeline: The pipeline to compile when ``package_path`` is empty.
    """

    kind = "kfp"

    def __init__(self, host: str, package_path: str, arguments: dict,
                 experiment: str = "pet-classifier-retraining", namespace: str | None = None,
                 trigger_argument: str = "trigger", client=None,
                 pipeline: str = "continuous-training"):
        self.host = host.rstrip("/")
        self.package_path = package_path
        self.arguments = dict(arguments)
        self.experiment = experiment
        self.namespace = namespace
        self.trigger_argument = trigger_argument
        self._client = client
        self.pipeline = pipeline

    @property
    def client(self):
        if self._client is None:
            import warnings

            import kfp
            from kfp.client import (
                KF_PIPELINES_SA_TOKEN_ENV,
                KF_PIPELINES_SA_TOKEN_PATH,
                ServiceAccountTokenVolumeCredentials,
            )

            # In a pipeline pod of multi-user Kubeflow, the projected service-account token
            # (audience pipelines.kubeflow.org) authenticates the step to the KFP API.
            token = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH)
            credentials = ServiceAccountTokenVolumeCredentials() if Path(token).is_file() \
                else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._client = kfp.Client(host=self.host or None,
                                          namespace=self.namespace or "kubeflow",
                                          credentials=credentials)
        return self._client

    def launch(self, trigger: dict) -> dict:
        import urllib3
        from kfp_server_api.exceptions import ApiException

        if not self.package_path:
            self.package_path = self._compile()
        if not Path(self.package_path).is_file():
            raise LaunchError(f"No compiled pipeline at {self.package_path}: run "
                              "`mlops compile` and pass its continuous-training YAML.")
        run_name = f"retrain-{trigger.get('model', 'model')}-{trigger.get('episode', 'manual')}"
        try:
            result = self.client.create_run_from_pipeline_package(
                self.package_path,
                arguments={**retraining_arguments(self.pipeline, self.arguments),
                           self.trigger_argument: json.dumps(trigger)},
                run_name=run_name, experiment_name=self.experiment,
                namespace=self.namespace)
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise LaunchError(f"Kubeflow Pipelines at {self.host} did not start the run: "
                              f"{exc}") from exc
        run_id = result.run_id
        logger.info("Submitted %s to %s as run %s", run_name, self.host, run_id)
        return {"run_id": run_id, "url": f"{self.host}/#/runs/details/{run_id}",
                "launcher": self.kind, "run_name": run_name, "state": "running"}

    def _compile(self) -> str:
        """Compiles the pipeline this code holds (the image's own), when no package is given."""
        import tempfile

        from kfp import compiler

        name = _pipeline_name(self.pipeline)
        if ":" in name:
            import importlib

            module, attr = name.split(":", 1)
            func = getattr(importlib.import_module(module), attr)
        else:
            func = load(name)
        path = Path(tempfile.mkdtemp(prefix="mlops-retrain-")) / "pipeline.yaml"
        compiler.Compiler().compile(func, str(path))
        logger.info("Compiled %s to %s", self.pipeline, path)
        return str(path)

    def state(self, launch: dict) -> str:
        import urllib3
        from kfp_server_api.exceptions import ApiException

        try:
            run = self.client.get_run(launch["run_id"])
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            logger.warning("Cannot read the state of run %s: %s", launch["run_id"], exc)
            return "unknown"
        state = str(run.state or "").upper()
        if state in _KFP_DONE:
            return _KFP_DONE[state]
        return "running" if state in _KFP_RUNNING else "unknown"


def open_launcher(kind: str, arguments: dict, *, runs_root: str | os.PathLike = "",
                  pipeline: str = "continuous-training", trigger_argument: str = "trigger",
                  kfp_host: str = "", package_path: str = "", namespace: str | None = None,
                  wait: bool = False, records_dir: str | os.PathLike | None = None
                  ) -> RetrainLauncher | None:
    """The launcher of ``kind``: ``none`` (record the trigger only), ``local`` or ``kfp``.

    Args:
        kind: One of :data:`LAUNCHER_KINDS`.
        arguments: The pipeline's arguments (the trigger is added to them).
        runs_root: Folder of the local runs (``local``).
        pipeline: The pipeline to run (the policy's ``retrain.pipeline``).
        trigger_argument: The pipeline parameter that takes the trigger.
        kfp_host: The KFP API (``kfp``; empty: kfp.Client's in-cluster default).
        package_path: The compiled pipeline (``kfp``; empty: compile ``pipeline``).
        namespace: The profile namespace (``kfp``).
        wait: Wait for a local run to end.
        records_dir: Where a local run is recorded for ``mlops runs`` (None: not recorded).

    Raises:
        ValueError: An unknown kind.
    """
    if kind == "none":
        return None
    if kind == "kfp":
        return KfpLauncher(kfp_host, package_path, arguments, namespace=namespace,
                           trigger_argument=trigger_argument, pipeline=pipeline)
    if kind == "local":
        return LocalLauncher(arguments, runs_root, pipeline=pipeline,
                             trigger_argument=trigger_argument, wait=wait,
                             records_dir=records_dir)
    raise ValueError(f"Unknown launcher {kind!r}. Expect kfp, local or none.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The local retraining launcher's process.")
    parser.add_argument("--run-local", required=True, help="spec.json written by LocalLauncher")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    return run_local_spec(args.run_local)


if __name__ == "__main__":
    sys.exit(main())
