"""Tier 3: pipelines under kfp.local, compiled IR YAML, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate
from components.ingest.snapshot import list_versions
from pipelines import PIPELINES
from pipelines.local import run_local

REPO = Path(__file__).resolve().parents[1]


def _read_ir(path: Path) -> tuple[dict, dict]:
    """A compiled pipeline: the pipeline spec and the (Kubernetes) platform spec."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = next(d for d in docs if "deploymentSpec" in d)
    platform = next((d for d in docs if "platforms" in d), {})
    return spec, platform


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ingest_pipeline_runs_locally(tmp_path):
    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=40, size=32, seed=10), lake)
    outputs = run_local("ingest", {"data_uri": lake.uri, "dataset_root": str(tmp_path / "ds")},
                        tmp_path / "runs")
    version = outputs["dataset_version"]
    assert list_versions(str(tmp_path / "ds")) == [version]
    assert outputs["train"].metadata["dataset_version"] == version
    total = outputs["train"].metadata["count"] + outputs["test"].metadata["count"]
    assert total == 40
    assert os.path.exists(os.path.join(outputs["train"].path, "manifest.csv"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failed_task_fails_the_local_run(tmp_path):
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_local("ingest", {"data_uri": str(tmp_path / "nothing-here"),
                             "dataset_root": str(tmp_path / "ds")}, tmp_path / "runs")


def _compile(tmp_path, *extra, env=None):
    out = tmp_path / "compiled"
    subprocess.run([sys.executable, "-m", "components.cli", "compile", "--out", str(out),
                    *extra], check=True, cwd=REPO, env={**os.environ, **(env or {})},
                   capture_output=True, text=True)
    return out


@pytest.mark.timeout(300)
def test_every_pipeline_compiles_to_loadable_ir_with_our_image(tmp_path):
    from kfp import components

    out = _compile(tmp_path, "--image", "registry.example/pets/mlops:1.2.3",
                   "--storage-secret", "lake-creds")
    for name in PIPELINES:
        path = out / f"{name}.yaml"
        spec, platform = _read_ir(path)
        executors = spec["deploymentSpec"]["executors"]
        assert executors, name
        images = {e["container"]["image"] for e in executors.values()}
        assert images == {"registry.example/pets/mlops:1.2.3"}, (name, images)
        # The image already holds kfp and the package: no pip install at task start.
        assert not any("pip install" in " ".join(e["container"].get("command", []))
                       for e in executors.values())
        secret_env = [s for e in platform["platforms"]["kubernetes"]["deploymentSpec"][
            "executors"].values() for s in e.get("secretAsEnv", [])]
        assert secret_env and all(s["secretName"] == "lake-creds" and s["optional"]
                                  for s in secret_env)
        loaded = components.load_component_from_file(str(path))
        assert loaded.name == spec["pipelineInfo"]["name"]
    # The training pipeline goes on to test the registered model as an application and to
    # release it, each behind its gate, and deploys to KServe unless told otherwise.
    spec, _ = _read_ir(out / "training.yaml")
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-application-test", "exec-qa-gate", "exec-release-model"} <= set(executors)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["deploy_target"]["defaultValue"] == "kserve"
    assert {"canary_steps", "require_approval", "p95_slo_ms", "namespace"} <= set(params)


@pytest.mark.timeout(300)
def test_default_compile_uses_the_project_image_not_a_bare_python_image(tmp_path):
    from components.settings import DEFAULT_IMAGE

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    out = tmp_path / "c"
    subprocess.run([sys.executable, "-m", "components.cli", "compile", "--out", str(out)],
                   check=True, cwd=REPO, env=env, capture_output=True)
    for name in PIPELINES:
        spec, _ = _read_ir(out / f"{name}.yaml")
        for e in spec["deploymentSpec"]["executors"].values():
            assert e["container"]["image"] == DEFAULT_IMAGE


def _mlops(*args, env=None):
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_cli_generate_prints_counts_and_bad_input_says_what_to_fix(tmp_path):
    ok = _mlops("data", "generate", "--out", str(tmp_path / "lake"), "--n", "12", "--size", "32")
    assert ok.returncode == 0, ok.stderr
    assert "Wrote 12 images" in ok.stdout
    bad = _mlops("data", "generate", "--out", str(tmp_path / "lake"), "--n", "0")
    assert bad.returncode == 2 and "--n 0: expected a number >= 1" in bad.stderr
    bad_uri = _mlops("data", "generate", "--out", "gs://bucket/x", "--n", "1")
    assert bad_uri.returncode == 2 and "Unsupported storage URI" in bad_uri.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_run_ingest_prints_version_counts_and_outputs(tmp_path):
    generate(LakeSpec(n=30, size=32, seed=11), open_store(tmp_path / "lake"))
    res = _mlops("run", "ingest", "--data", str(tmp_path / "lake"), "--dataset-root",
                 str(tmp_path / "ds"), "--outputs", str(tmp_path / "runs"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    version = list_versions(str(tmp_path / "ds"))[0]
    assert f"Dataset version: {version}" in res.stdout
    assert "30 ingested + 0 quarantined + 0 duplicates == 30 listed" in res.stdout
    page = next(line.split()[-1] for line in res.stdout.splitlines()
                if line.strip().startswith("report:"))
    assert page.endswith(".html") and "<table>" in open(page).read()


def test_cli_submit_to_an_unreachable_api_fails_with_the_host_named(tmp_path):
    res = _mlops("submit", "ingest", "--host", "http://127.0.0.1:9", "--arg", "data_uri=s3://x",
                 "--arg", "dataset_root=s3://y")
    assert res.returncode != 0
    assert "127.0.0.1:9" in res.stderr


def _training_args(tmp_path, lake_uri, **extra):
    return {"data_uri": lake_uri, "dataset_root": str(tmp_path / "ds"),
            "registry_uri": str(tmp_path / "registry"), "work_root": str(tmp_path / "work"),
            "trial_epochs": 1, "epochs": 3, "image_size": 32, "deploy_target": "local",
            "serving_root": str(tmp_path / "deployments"), "p95_slo_ms": 2000.0,
            "canary_requests_per_step": 20, **extra}


@pytest.fixture
def local_servers(tmp_path):
    """Stops whatever model servers a pipeline run left in production or test."""
    from components.deploy.targets.local import LocalTarget

    yield
    LocalTarget(str(tmp_path / "registry"), "pet-classifier",
                tmp_path / "deployments").delete_all()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_pipeline_registers_tests_and_releases_a_traceable_model(tmp_path,
                                                                           local_servers):
    from components.common.registry import ModelRegistry
    from components.deploy.client import predict
    from components.deploy.targets.local import LocalTarget

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=300, size=32, seed=12), lake)
    outputs = run_local("training", _training_args(
        tmp_path, lake.uri, min_accuracy=0.0, min_macro_f1=0.0, max_recall_gap=1.0),
        tmp_path / "runs")
    assert outputs["blessed"] is True
    registry = ModelRegistry(str(tmp_path / "registry"))
    mv = registry.get("pet-classifier", "latest")
    # Released (the first release deploys directly) and serving from production.
    assert registry.aliases("pet-classifier") == {"staging": 1, "production": 1}
    assert mv.version == 1 and registry.releases("pet-classifier")[-1]["decision"] == "deployed"
    target = LocalTarget(registry.uri, "pet-classifier", tmp_path / "deployments")
    prod = target.status("production")
    assert prod.stable.version == 1 and target.status("test") is None
    image = next(iter(lake.list())).key
    assert predict(prod.url, prod.name, [lake.get(image)])[0]["label"] in ("cats", "dogs")
    lin = mv.lineage
    assert lin["dataset_version"] == outputs["dataset_version"]
    assert lin["dataset_manifest"].endswith(f"{outputs['dataset_version']}/manifest.csv")
    assert lin["code_version"].startswith(("git:", "package:"))
    # The run itself, not kfp.local's name for the job inside dsl.If ("<run>/condition-1").
    assert lin["pipeline_run"].startswith("pet-classifier-training-")
    assert "/" not in lin["pipeline_run"]
    assert lin["hyperparameters"]["arch"] == "small_cnn"
    assert lin["training"]["distributed"] == {"nodes": 1, "processes": 1, "backend": ""}
    assert len(lin["search_trials"]) == 4  # every trial slot ran and was recorded
    assert {"model.onnx", "metadata.json", "MODEL_CARD.md", "lineage.json"} <= set(mv.files)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_pipeline_stops_an_unblessed_model_before_packaging(tmp_path):
    from components.common.registry import ModelRegistry

    lake = open_store(tmp_path / "lake")
    generate(LakeSpec(n=200, size=32, seed=13), lake)
    outputs = run_local("training", _training_args(tmp_path, lake.uri, min_accuracy=1.01,
                                                   epochs=1), tmp_path / "runs")
    assert outputs["blessed"] is False
    assert "accuracy" in outputs["evaluation"].metadata["gate"]
    assert ModelRegistry(str(tmp_path / "registry")).models() == []
    runs = list((tmp_path / "runs").iterdir())
    assert not any((run / "package-model").exists() for run in runs)


@pytest.mark.timeout(300)
def test_compile_for_gpus_and_a_trainjob_asks_for_what_was_given(tmp_path):
    from kfp import components

    out = _compile(tmp_path, "--accelerator", "nvidia.com/gpu", "--accelerator-count", "2",
                   "--trainer-nodes", "3", "--node-selector",
                   "cloud.google.com/gke-accelerator=nvidia-l4", "--toleration",
                   "nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute", "training",
                   "continuous-training")
    for name in ("training", "continuous-training"):
        path = out / f"{name}.yaml"
        spec, platform = _read_ir(path)
        executors = spec["deploymentSpec"]["executors"]
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        trials = [k for k in executors if k.startswith("exec-hpo-trial")]
        assert trials, name
        for key in trials:
            res = executors[key]["container"]["resources"]
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert res["accelerator"]["resourceCount"] == "2"
            assert res["resourceCpuRequest"] == "4" and res["resourceMemoryRequest"] == "16G"
            assert k8s[key]["nodeSelector"]["labels"] == {
                "cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert {(t["key"], t["operator"], t["effect"]) for t in k8s[key]["tolerations"]} == {
                ("nvidia.com/gpu", "Exists", "NoSchedule"), ("dedicated", "Equal", "NoExecute")}
        # the final training is a TrainJob of 3 nodes with 2 GPUs (2 processes) each; its own
        # task only launches and watches it
        assert "exec-train-best" not in executors and "exec-train-best-trainjob" in executors
        task = next(t for t in spec["root"]["dag"]["tasks"].values()
                    if t["componentRef"]["name"] == "comp-train-best-trainjob")
        given = {k: v["runtimeValue"]["constant"] for k, v in task["inputs"]["parameters"].items()
                 if "runtimeValue" in v}
        assert (given["nodes"], given["procs_per_node"], given["accelerator_count"],
                given["accelerator_resource"]) == (3, 2, 2, "nvidia.com/gpu")
        assert "accelerator" not in executors["exec-train-best-trainjob"]["container"].get(
            "resources", {})
        loaded = components.load_component_from_file(str(path))
        assert loaded.name == spec["pipelineInfo"]["name"]


@pytest.mark.parametrize("option, value, named", [
    ("--toleration", "nvidia.com/gpu", "Invalid --toleration 'nvidia.com/gpu'"),
    ("--node-selector", "gpu", "Invalid --node-selector 'gpu'"),
    ("--trainer-nodes", "0", "Invalid --trainer-nodes 0"),
    # Kubernetes would refuse these at run time, after the pipeline was uploaded.
    ("--toleration", "a=b=c:NoSchedule", "Invalid --toleration 'a=b=c:NoSchedule'"),
    ("--node-selector", "gpu type=l4", "Invalid --node-selector 'gpu type=l4'"),
])
def test_bad_accelerator_options_are_one_line_naming_the_option(tmp_path, option, value, named):
    done = _mlops("compile", "--out", str(tmp_path / "c"), option, value, "training")
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr


@pytest.mark.timeout(300)
def test_every_monitoring_task_asks_for_resources_and_is_retried(tmp_path):
    """Like the training pipeline's: CPU and memory requests and limits, and retries (both
    tasks can be repeated: governance acts at most once per verdict)."""
    out = _compile(tmp_path, "monitoring")
    spec, _ = _read_ir(out / "monitoring.yaml")
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-monitor-window", "exec-govern-verdict"}
    for key, executor in executors.items():
        res = executor["container"].get("resources", {})
        assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest",
                "resourceMemoryLimit"} <= set(res), (key, res)
    tasks = spec["root"]["dag"]["tasks"]
    assert {name: t.get("retryPolicy", {}).get("maxRetryCount") for name, t in
            tasks.items()} == {"monitor-window": 2, "govern-verdict": 2}
