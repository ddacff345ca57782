"""``mlops submit`` and ``mlops schedule`` against the stand-in of the KFP v2beta1 REST API on
127.0.0.1 (``tests/kfp_standin.py``; the real ``kfp.Client`` talks to it), and the typing of
``--arg`` values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.cli.cluster import kfp_cron, typed_arguments
from tests.kfp_standin import KfpStandIn

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def kfp_api():
    api = KfpStandIn(multi_user=True)
    yield api
    api.stop()


def _mlops(*args, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "KF_PIPELINES"))}
    env["HOME"] = str(home)  # kfp.Client reads ~/.config/kfp/context.json
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=240)


REQUIRED = ["--arg", "data_uri=s3://lake/petpark", "--arg", "dataset_root=s3://mlops/datasets",
            "--arg", "registry_uri=s3://mlops/registry", "--arg", "work_root=s3://mlops/work"]


def test_arguments_take_the_pipelines_declared_types():
    from pipelines import load

    training = load("training")
    args = typed_arguments(training, [
        "data_uri=s3://lake", "dataset_root=s3://d", "registry_uri=s3://r", "work_root=s3://w",
        'search_space={"lr": [0.01]}', "canary_steps=50", "epochs=5", "min_accuracy=0.95",
        "require_approval=true", "namespace=team-pets"])
    assert args["search_space"] == '{"lr": [0.01]}'  # a JSON *string* parameter stays text
    assert args["canary_steps"] == "50"  # a string, not the int the API server rejects
    assert args["epochs"] == 5 and args["min_accuracy"] == 0.95
    assert args["require_approval"] is True and args["namespace"] == "team-pets"
    with pytest.raises(ValueError, match=r"epochs='five'.*Integer"):
        typed_arguments(training, [*args_of(args), "epochs=five"])
    with pytest.raises(ValueError, match="require_approval='maybe'.*Boolean"):
        typed_arguments(training, [*args_of(args), "require_approval=maybe"])
    with pytest.raises(ValueError, match="Unknown parameter 'epoch'"):
        typed_arguments(training, ["epoch=5"])
    with pytest.raises(ValueError, match="needs --arg for data_uri, dataset_root"):
        typed_arguments(training, ["epochs=5"])
    assert kfp_cron("0 */6 * * *") == "0 0 */6 * * *"
    with pytest.raises(ValueError, match="Invalid --cron"):
        kfp_cron("every hour")


def args_of(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items() if k in ("data_uri", "dataset_root",
                                                          "registry_uri", "work_root")]


def test_submit_sends_typed_parameters_with_the_token_and_our_images(kfp_api, tmp_path):
    result = _mlops("submit", "training", "--host", kfp_api.url, "--namespace", "team-pets",
                    "--token", "tok-123", "--image", "registry.example/mlops:2",
                    "--predictor-image", "registry.example/predictor:2", *REQUIRED,
                    "--arg", "canary_steps=50", "--arg", "epochs=4",
                    "--arg", 'search_space={"lr": [0.01]}', home=tmp_path)
    assert result.returncode == 0, result.stderr
    (created,) = kfp_api.runs.values()
    assert f"Submitted run {created['run_id']}" in result.stdout
    run = kfp_api.posted("/apis/v2beta1/runs")
    assert run["authorization"] == "Bearer tok-123"
    params = run["body"]["runtime_config"]["parameters"]
    assert params["canary_steps"] == "50" and params["epochs"] == 4
    assert params["search_space"] == '{"lr": [0.01]}'
    spec = run["body"]["pipeline_spec"]["pipeline_spec"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/mlops:2"}
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["predictor_image"]["defaultValue"] == "registry.example/predictor:2"
    assert kfp_api.posted("/apis/v2beta1/experiments")["body"]["namespace"] == "team-pets"


def test_schedule_creates_a_cron_recurring_run_without_catch_up(kfp_api, tmp_path):
    result = _mlops("schedule", "ingest", "--host", kfp_api.url, "--cron", "0 */6 * * *",
                    "--cookies", "oauth2_proxy_kubeflow=abc", "--arg", "data_uri=s3://lake",
                    "--arg", "dataset_root=s3://mlops/datasets", home=tmp_path)
    assert result.returncode == 0, result.stderr
    job = kfp_api.posted("/apis/v2beta1/recurringruns")
    assert job["cookie"] == "oauth2_proxy_kubeflow=abc"
    body = job["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 */6 * * *"
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    (experiment_id,) = kfp_api.experiments
    assert body["mode"] == "ENABLE" and body["experiment_id"] == experiment_id
    assert body["runtime_config"]["parameters"]["data_uri"] == "s3://lake"
    assert "pipeline_spec" in body
    assert "no catch-up" in result.stdout


def test_a_refused_submission_says_how_to_authenticate(tmp_path):
    api = KfpStandIn(multi_user=True, deny_without_auth=True)
    try:
        result = _mlops("submit", "ingest", "--host", api.url, "--arg", "data_uri=s3://l",
                        "--arg", "dataset_root=s3://d", home=tmp_path)
    finally:
        api.stop()
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr and "--token" in result.stderr and "--cookies" in \
        result.stderr
    assert "Traceback" not in result.stderr
    bad = _mlops("submit", "ingest", "--host", "http://127.0.0.1:9", "--arg", "dataset=x",
                 home=tmp_path)
    assert bad.returncode == 2 and "Unknown parameter 'dataset'" in bad.stderr


def test_manifests_command_writes_overlays_with_the_values_given(tmp_path):
    out = tmp_path / "m"
    result = _mlops("manifests", "--out", str(out), "--namespace", "team-pets",
                    "--s3-endpoint", "http://minio-service.kubeflow:9000", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"kubectl apply -k {out}/overlays/multi-user  (namespace team-pets, pipeline pods " \
           "as team-pets/default-editor)" in result.stdout
    # Standalone pipeline pods stay in kubeflow: the TrainJob Role must be added there too.
    (trainer_line,) = [line for line in result.stdout.splitlines() if "--trainer-nodes" in line]
    assert "kubectl -n kubeflow create role pet-classifier-trainer --verb=get,list,watch," \
           "create,delete --resource=trainjobs.trainer.kubeflow.org" in trainer_line
    assert "--serviceaccount=kubeflow:pipeline-runner" in trainer_line
    assert "Fill" in result.stdout and "s3.env" in result.stdout
    assert "namespace: team-pets" in (out / "overlays" / "standalone" /
                                      "kustomization.yaml").read_text()
    assert "serving.kserve.io/s3-endpoint: minio-service.kubeflow:9000" in \
        (out / "base" / "kustomization.yaml").read_text()


def test_every_pipeline_parameter_is_documented_and_can_be_given_on_the_command_line():
    import inspect
    import re

    from pipelines import PIPELINES, load

    for name in PIPELINES:
        pipeline = load(name)
        doc = pipeline.pipeline_func.__doc__ or ""
        documented = set(re.findall(r"^\s{8}(\w+):", doc, re.M))
        params = inspect.signature(pipeline.pipeline_func).parameters
        assert not [p for p in params if p not in documented], name
        for spec in pipeline.component_spec.inputs.values():
            assert str(spec.type) in ("String", "Integer", "Float", "Boolean", "List", "Dict")
