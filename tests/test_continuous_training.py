"""The continuous-training pipeline under kfp.local: a challenger that must win (released by
canary, traceable to the verdict and the production data) and one that must lose
(production untouched, the rejection recorded), and its compiled YAML."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common.registry import ModelRegistry
from components.datagen.core import LakeSpec
from demo.loop import LoopConfig, bootstrap_production
from pipelines.local import run_local

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
MODEL = "pet-classifier"


def capture_night(base: Path, n: int, first_index: int = 0, seed: int = 41) -> dict:
    """Night-mode camera traffic served by the production model, captured and labelled."""
    from components.monitor.simulate import registered_model, simulate

    registry = str(base / "registry")
    version = ModelRegistry(registry).resolve(MODEL, "@production")
    return simulate(registered_model(registry, MODEL, version),
                    str(base / "monitoring"), MODEL, str(version),
                    LakeSpec(n=n, size=SIZE, seed=seed, condition="night"),
                    start_time=1_790_000_000.0, first_index=first_index, image_rate=1.0,
                    label_share=1.0)


@pytest.fixture(scope="session")
def night_world(tmp_path_factory):
    """Champion in production, 200 night captures labelled: a template each test copies."""
    base = tmp_path_factory.mktemp("ct-world")
    champion = bootstrap_production(base, n=400, size=SIZE, epochs=6, reference_sample=200)
    served = capture_night(base, 200)
    return base, champion, served


def _copy_world(night_world, tmp_path) -> Path:
    base = tmp_path / "world"
    shutil.copytree(night_world[0], base)
    return base


def _ct_args(base: Path, **extra) -> dict:
    s = LoopConfig(home=base).stores
    trigger = {"episode": "v1-1", "model": MODEL, "model_version": "1",
               "verdict": "20261123T200000Z-test", "verdict_uri": "file:///verdict.json",
               "rules": ["drift-retrain"], "checks": ["drift.embedding"]}
    return {"data_uri": s["lake"], "dataset_root": s["datasets"],
            "registry_uri": s["registry"], "work_root": s["work"],
            "monitoring_uri": s["monitoring"], "trigger": json.dumps(trigger),
            "image_size": SIZE, "trial_epochs": 2, "epochs": 6, "deploy_target": "local",
            "serving_root": s["deployments"], "p95_slo_ms": 2000.0,
            "canary_requests_per_step": 20, "min_accuracy": 0.5, "min_macro_f1": 0.5,
            "max_recall_gap": 0.5, "champion_tolerance": 0.02, "max_reference_drop": 0.1,
            "min_recent_images": 10, **extra}


@pytest.fixture
def stop_servers(tmp_path):
    yield
    from components.deploy.targets.local import LocalTarget

    LocalTarget(str(tmp_path / "world" / "registry"), MODEL,
                tmp_path / "world" / "deployments").delete_all()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_challenger_that_wins_on_night_images_is_released_and_traceable(
        night_world, tmp_path, stop_servers):
    from components.common.governance import AuditLog, GovernanceStore
    from components.monitor.export import read_export

    base = _copy_world(night_world, tmp_path)
    champion = night_world[1]
    outputs = run_local("continuous-training", _ct_args(base), tmp_path / "runs")

    evaluation = json.loads(Path(outputs["evaluation"].path).read_text())
    gate = evaluation["gate"]
    recent = gate["recent"]
    assert outputs["blessed"] is True, gate["reasons"]
    assert recent["recent_images"] >= 10
    assert recent["recent_accuracy"]["challenger"] > recent["recent_accuracy"]["champion"]
    assert recent["overall_accuracy"]["gain"] >= -0.02
    # Released by canary over the champion; production moved; the reference is active.
    registry = ModelRegistry(str(base / "registry"))
    assert registry.aliases(MODEL)["production"] == 2
    release = registry.releases(MODEL)[-1]
    assert release["version"] == 2 and release["decision"] == "promoted"
    assert [s["percent"] for s in release["steps"]][:2] == [10, 50]
    # Lineage: the verdict that started it, the export and the requests it came from.
    lin = registry.get(MODEL, 2).lineage
    assert lin["trigger"]["verdict"] == "20261123T200000Z-test"
    assert lin["trigger"]["kind"] == "monitoring"
    export = lin["production_data"]
    assert export["export_id"] == outputs["export_id"] and export["production_version"] == 1
    assert lin["dataset_version"] == outputs["dataset_version"]
    info, manifest = read_export(str(base / "monitoring"), export["export_id"])
    assert len(manifest) == export["counts"]["exported"] == night_world[2]["labelled"]
    assert lin["parent_version"] == 1
    assert lin["hyperparameters"]["pretrained"].endswith("warm_start.pt")  # warm-started
    records = AuditLog(GovernanceStore(str(base / "monitoring"), MODEL)).records()
    assert any(r["kind"] == "release" and r["details"]["version"] == 2 for r in records)
    assert champion["version"] == 1
    # The compliance report names the export and which images the reference holds.
    from components.govern.report import write_report

    paths = write_report(MODEL, "@production", str(base / "registry"),
                         str(base / "monitoring"), str(tmp_path / "report"))
    text = Path(paths["markdown"]).read_text()
    row = next(line for line in text.splitlines() if "production data (export)" in line)
    assert export["export_id"] in row and export["manifest_uri"] in row
    assert f"new to version {export['production_version']}" in row
    ref = json.loads(registry.read_file(MODEL, 2, lin["monitoring_reference"]))
    assert f"{ref['sample']['n']} images, {ref['sample']['from']}" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_challenger_that_loses_leaves_production_untouched_and_is_recorded(
        night_world, tmp_path, stop_servers):
    from components.common.governance import AuditLog, GovernanceStore

    base = _copy_world(night_world, tmp_path)
    # A barely trained model from scratch: the champion must win.
    outputs = run_local("continuous-training", _ct_args(
        base, warm_start_from_production=False, trial_epochs=1, epochs=1,
        search_space=json.dumps({"lr": [1e-6], "batch_size": [64]})), tmp_path / "runs")

    assert outputs["blessed"] is False
    gate = outputs["evaluation"].metadata["gate"]
    assert "worse than the" in gate or "not better than" in gate
    registry = ModelRegistry(str(base / "registry"))
    assert registry.versions(MODEL) == [1] and registry.aliases(MODEL)["production"] == 1
    assert registry.releases(MODEL) == []
    records = AuditLog(GovernanceStore(str(base / "monitoring"), MODEL)).records()
    rejected = [r for r in records if r["kind"] == "retrain_failed"]
    assert len(rejected) == 1 and rejected[0]["details"]["trigger"]["episode"] == "v1-1"
    # The export happened (the data is in the lake for the next try), the version did not.
    assert outputs["export_id"]


@pytest.mark.timeout(300)
def test_continuous_training_compiles_with_its_gates_and_trigger_parameter(tmp_path):
    out = tmp_path / "compiled"
    subprocess.run([sys.executable, "-m", "components.cli", "compile", "--out", str(out),
                    "continuous-training"], check=True, cwd=REPO, capture_output=True)
    docs = [d for d in yaml.safe_load_all((out / "continuous-training.yaml").read_text()) if d]
    spec = next(d for d in docs if "deploymentSpec" in d)
    assert spec["pipelineInfo"]["name"] == "pet-classifier-continuous-training"
    executors = set(spec["deploymentSpec"]["executors"])
    assert {"exec-export-production-data", "exec-ingest-data", "exec-warm-start",
            "exec-evaluate-challenger", "exec-quality-gate", "exec-register-model",
            "exec-application-test", "exec-release-model", "exec-activate-reference",
            "exec-record-rejection"} <= executors
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"trigger", "monitoring_uri", "min_recent_gain", "max_reference_drop",
            "warm_start_from_production"} <= set(params)
    assert not any("for-loop" in name for name in spec["root"]["dag"]["tasks"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_closed_loop_detects_night_alerts_retrains_and_judges_the_next_window(tmp_path):
    """The story at a small size: real model servers over HTTP with capture, the monitor,
    governance with a webhook receiver on loopback, and the continuous-training pipeline."""
    from components.deploy.targets.local import LocalTarget
    from demo.loop import run_loop

    home = tmp_path / "home"
    bootstrap_production(home, n=400, size=SIZE, epochs=8, reference_sample=200)
    config = LoopConfig(home=home, size=SIZE, day_requests=100, window=50, check_every=50,
                        max_night_requests=150, after_requests=50, label_share=0.8,
                        retrain_labels=120,
                        ct_arguments={"trial_epochs": 2, "epochs": 6, "min_accuracy": 0.5,
                                      "min_macro_f1": 0.5, "max_recall_gap": 0.5,
                                      "champion_tolerance": 0.02, "max_reference_drop": 0.1,
                                      "canary_requests_per_step": 20, "p95_slo_ms": 2000.0})
    events = []
    try:
        result = run_loop(config, on_event=events.append)
    finally:
        s = config.stores
        LocalTarget(s["registry"], MODEL, s["deployments"]).delete_all()

    timeline = "\n".join(f"{e['requests']} {e['kind']} {e['text']}" for e in events)
    # The day windows raised no drift alarm; the night stream did, quickly.
    day = [v for v in result["verdicts"] if v["night_share"] == 0][:2]
    assert day[-1]["requests"] == 100 and not any(c["status"] == "alarm" for v in day
                                                  for n, c in v["checks"].items()
                                                  if n.startswith("drift.")), timeline
    assert result["detection"] and result["detection"]["requests_after_switch"] <= 100
    assert any(c.startswith("drift.") for c in result["detection"]["checks"])
    # The product owner's webhook received the alert over HTTP.
    assert any(a["path"] == "/product-owner" for a in result["alerts_received"])
    # One retraining run, with the captured night images exported and judged by slice.
    release = result["release"]
    assert release["state"] == "succeeded", release
    assert release["export_id"]
    recent = release["gate"]["recent"]
    assert recent["recent_images"] >= 10
    kinds = [e["kind"] for e in events]
    started = [e for e in events if e["kind"] == "retrain" and "started run" in e["text"]]
    assert len(started) == 1, timeline  # one run; a later trigger is recorded, not started
    assert kinds.index("switch") < kinds.index("alarm") < kinds.index("retrain")
    if release["gate"]["blessed"]:
        assert release["decision"] == "promoted" and result["version_after"] == 2, timeline
        assert result["after"]["version"] == "2"
        assert recent["recent_accuracy"]["challenger"] > recent["recent_accuracy"]["champion"]
    else:  # the champion won: production untouched, the next window judged against it
        assert result["version_after"] == 1 and release["decision"] is None
        assert result["after"]["version"] == "1"
    assert result["after"]["n"] == 50
    # Morning: the camera back in day mode is judged by the version now in production, whose
    # reference covers both contexts: a window of day frames, normal in every context.
    morning = result["day_after"]
    assert morning["night_share"] == 0 and morning["n"] == 50, timeline
    assert morning["version"] == result["after"]["version"]
    assert not any(k.startswith("drift.") for k in morning["alarms"]), timeline
    back = max(i for i, k in enumerate(kinds) if k == "switch")  # back to day mode
    assert kinds.count("switch") == 2 and back > kinds.index("retrain"), timeline
    assert "normal" in kinds[back:] or morning["alarms"], timeline
