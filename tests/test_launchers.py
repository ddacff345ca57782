"""The retraining launchers governance is given: one for kfp.local and one for the KFP API
(against a loopback stand-in of the v2beta1 API), each driven by a real govern run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.governance import AuditLog, GovernanceStore
from components.govern.core import govern
from components.govern.tests.test_trigger import MODEL, POLICY, verdict
from components.govern.trigger import Episodes, LaunchError
from pipelines.launchers import KfpLauncher, LocalLauncher


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_local_launcher_runs_a_pipeline_under_kfp_local(tmp_path):
    out = tmp_path / "trigger.json"
    launcher = LocalLauncher({"out_file": str(out)}, tmp_path / "runs",
                             pipeline="components.govern.tests.retrain_pipeline:retrain_stand_in",
                             wait=True, timeout_s=200, records_dir=tmp_path / "records")
    acts = govern(verdict("w1", 1), POLICY, store_uri=str(tmp_path / "store"),
                  launcher=launcher)
    assert acts[0]["action"] == "retrain"
    (ep,) = Episodes(GovernanceStore(str(tmp_path / "store"), MODEL)).all()
    assert ep["launch"]["state"] == "succeeded", (Path(ep["launch"]["run_dir"]) /
                                                  "run.log").read_text()[-3000:]
    assert json.loads(out.read_text())["verdict"] == "w1"
    assert launcher.state(ep["launch"]) == "succeeded"
    # The retraining run is in `mlops runs list` like any other (issue 23, finding 5).
    from pipelines.runs import list_records

    (record,) = list_records(tmp_path / "records")
    assert record["status"] == "succeeded" and record["pipeline"].endswith("retrain_stand_in")


def test_local_launcher_names_an_unknown_pipeline(tmp_path):
    with pytest.raises(LaunchError, match="No pipeline 'nope'"):
        LocalLauncher({}, tmp_path, pipeline="nope").launch({"episode": "v1-0001"})


@pytest.fixture
def kfp_api():
    from tests.kfp_standin import KfpStandIn

    api = KfpStandIn()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from kfp import compiler

    from components.govern.tests.retrain_pipeline import retrain_stand_in

    path = tmp_path_factory.mktemp("compiled") / "retrain.yaml"
    compiler.Compiler().compile(retrain_stand_in, str(path))
    return str(path)


@pytest.mark.timeout(60)
def test_kfp_launcher_submits_the_compiled_pipeline_with_the_trigger(kfp_api, package,
                                                                     tmp_path):
    launcher = KfpLauncher(kfp_api.url, package, {"out_file": "/tmp/x.json"},
                           namespace="kubeflow-user-example-com")
    acts = govern(verdict("w1", 1), POLICY, store_uri=str(tmp_path), launcher=launcher)
    assert acts[0]["action"] == "retrain"
    (run,) = kfp_api.runs.values()
    assert acts[0]["run_id"] == run["run_id"]
    assert run["display_name"] == "retrain-pet-classifier-v3-0001"
    exp = kfp_api.experiments[run["experiment_id"]]
    assert exp["display_name"] == "pet-classifier-retraining"
    assert exp["namespace"] == "kubeflow-user-example-com"
    params = run["runtime_config"]["parameters"]
    assert json.loads(params["trigger"])["verdict"] == "w1"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "retrain-stand-in"
    # The run is in progress: a second drifting version starts nothing ...
    acts = govern(verdict("w2", 2, version="4"), POLICY, store_uri=str(tmp_path),
                  launcher=launcher)
    assert acts[0]["action"] == "retrain_skipped" and len(kfp_api.runs) == 1
    # ... until the API says it ended.
    run["state"] = "FAILED"
    acts = govern(verdict("w3", 3, version="4"), POLICY, store_uri=str(tmp_path),
                  launcher=launcher)
    assert acts[0]["action"] == "retrain" and len(kfp_api.runs) == 2


@pytest.mark.timeout(60)
def test_kfp_refusal_is_recorded_not_lost(kfp_api, package, tmp_path):
    # A parameter the pipeline does not have: the API refuses the run.
    launcher = KfpLauncher(kfp_api.url, package, {"no_such_parameter": 1},
                           namespace="kubeflow-user-example-com")
    acts = govern(verdict("w1", 1), POLICY, store_uri=str(tmp_path), launcher=launcher)
    assert acts[0]["action"] == "retrain_failed"
    assert "no_such_parameter" in acts[0]["detail"]
    record = AuditLog(GovernanceStore(str(tmp_path), MODEL)).records()[-1]
    assert record["kind"] == "retrain_failed"
    assert kfp_api.runs == {}


@pytest.mark.timeout(60)
def test_kfp_launcher_compiles_the_pipeline_it_runs_when_given_none(kfp_api, tmp_path):
    launcher = KfpLauncher(kfp_api.url, "", {"out_file": "/tmp/x.json"},
                           pipeline="components.govern.tests.retrain_pipeline:retrain_stand_in")
    acts = govern(verdict("w1", 1), POLICY, store_uri=str(tmp_path), launcher=launcher)
    assert acts[0]["action"] == "retrain"
    (run,) = kfp_api.runs.values()
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "retrain-stand-in"
    assert json.loads(run["runtime_config"]["parameters"]["trigger"])["episode"] == "v3-0001"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kfp_launcher_submits_the_real_continuous_training_pipeline(kfp_api, tmp_path):
    """The contract with pipelines/continuous_training.py: it compiles, takes the trigger as
    its `trigger` parameter, and the API accepts the run with the arguments governance
    passes (the stand-in refuses parameters the pipeline does not declare)."""
    arguments = {"data_uri": "s3://lake/petpark", "dataset_root": "s3://mlops/datasets",
                 "registry_uri": "s3://mlops/registry", "work_root": "s3://mlops/work",
                 "monitoring_uri": "s3://mlops/monitoring", "model_name": MODEL}
    launcher = KfpLauncher(kfp_api.url, "", arguments, namespace="kubeflow-user-example-com")
    acts = govern(verdict("w1", 1), POLICY, store_uri=str(tmp_path), launcher=launcher)
    assert acts[0]["action"] == "retrain", acts
    (run,) = kfp_api.runs.values()
    params = run["runtime_config"]["parameters"]
    assert json.loads(params["trigger"])["verdict"] == "w1"
    assert params["monitoring_uri"] == "s3://mlops/monitoring"
    # The storage Secret travels in the platform spec, not as a parameter.
    assert "platform_spec" in run["pipeline_spec"]


def test_open_launcher_builds_each_kind_and_names_an_unknown_one(tmp_path):
    from pipelines.launchers import LAUNCHER_KINDS, open_launcher

    assert open_launcher("none", {}) is None
    local = open_launcher("local", {"a": 1}, runs_root=tmp_path, wait=True)
    assert isinstance(local, LocalLauncher) and local.wait and local.arguments == {"a": 1}
    kfp = open_launcher("kfp", {}, kfp_host="http://kfp:8888/", namespace="ns")
    assert isinstance(kfp, KfpLauncher) and kfp.host == "http://kfp:8888"
    assert LAUNCHER_KINDS == ("none", "local", "kfp")
    with pytest.raises(ValueError, match="Unknown launcher 'cron'"):
        open_launcher("cron", {})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failed_local_retraining_names_its_step_and_what_to_do(tmp_path, capsys,
                                                                 monkeypatch):
    """A retraining run that failed said "step 'unknown' … Inner task failed: ." and
    `mlops govern start-episode` answered "already started … (running)"."""
    from components.cli import main
    from components.govern.core import GovernError, start_episode

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    store = str(tmp_path / "store")
    launcher = LocalLauncher({"out_file": str(tmp_path / "no-such-dir" / "t.json")},
                             tmp_path / "runs",
                             pipeline="components.govern.tests.retrain_pipeline:retrain_stand_in",
                             wait=True, timeout_s=200, records_dir=tmp_path / "records")
    govern(verdict("w1", 1), POLICY, store_uri=store, launcher=launcher)
    (ep,) = Episodes(GovernanceStore(store, MODEL)).all()
    assert ep["launch"]["state"] == "failed"
    result = json.loads((Path(ep["launch"]["run_dir"]) / "result.json").read_text())
    assert "step 'record-trigger'" in result["error"] and "t.json" in result["error"]
    assert result["run_record"].startswith("components.govern.tests.retrain_pipeline")
    with pytest.raises(GovernError, match="failed .*mlops govern retrain --reason WHY"):
        start_episode(store, MODEL, ep["key"], launcher)
    assert main(["govern", "episodes", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "why: step 'record-trigger'" in out and f"mlops runs show {result['run_record']}" \
        in out and "mlops govern retrain --reason WHY" in out


def test_episodes_say_when_a_retrained_model_was_not_released(tmp_path, capsys, monkeypatch):
    """`mlops govern episodes` said "succeeded" for a retraining whose model did not beat
    production: the product owner read it as fixed."""
    from components.cli import main
    from pipelines.launchers import RetrainLauncher

    run_dir = tmp_path / "runs" / "local-v3-0001-x"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({
        "state": "succeeded", "run_record": "continuous-training-1",
        "outputs": {"blessed": False}}))

    class Ran(RetrainLauncher):
        kind = "local"

        def launch(self, trigger):
            return {"run_id": run_dir.name, "url": run_dir.as_uri(), "launcher": "local",
                    "run_dir": str(run_dir), "pid": 0, "state": "running"}

        def state(self, launch):
            return "succeeded"

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    store = str(tmp_path / "store")
    govern(verdict("w1", 1), POLICY, store_uri=store, launcher=Ran())
    assert main(["govern", "episodes", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "not released: the retrained model did not beat " \
        "production, which is unchanged (mlops runs show continuous-training-1)" in out
