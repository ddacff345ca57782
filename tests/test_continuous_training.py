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


def _train_production_from_a_labels_csv_lake(base: Path) -> Path:
    """A lake of flat photos labelled by ``labels.csv`` (cat/dog, the aliases), its dataset
    version and a 32-px production model trained on it for one epoch, with the core functions
    the training pipeline's steps call (about 10 s): the state after `mlops run training
    --data lake --labels-csv lake/labels.csv`."""
    from components.common.storage import open_store
    from components.datagen.core import render
    from components.evaluate.core import GateConfig, evaluate
    from components.ingest.core import IngestConfig, ingest
    from components.ingest.snapshot import read_split, write_split
    from components.package.core import build_package
    from components.register.core import register_package
    from components.train import core as train

    lake = open_store(base / "lake")
    spec = LakeSpec(n=60, size=SIZE, seed=5)
    rows = ["key,label"]
    for j in range(spec.n):
        label, data = render(spec, j)
        lake.put(f"photos/img_{j:04d}.jpg", data)
        rows.append(f"photos/img_{j:04d}.jpg,{label}")
    (base / "lake" / "labels.csv").write_text("\n".join(rows) + "\n")
    result = ingest(lake.uri, str(base / "datasets"),
                    IngestConfig(labels_csv=str(base / "lake" / "labels.csv")))
    assert result.report["quarantined"] == 0
    work = base / "bootstrap"
    for split in ("train", "test"):
        write_split(result, split, str(work / split))
    rows_, meta = read_split(str(work / "train"))
    data = train.prepare(rows_, meta["dataset_version"], SIZE)
    train.train(data, train.HParams(epochs=1, image_size=SIZE, batch_size=32), work / "model")
    evaluation = evaluate(str(work / "model"), str(work / "test"), GateConfig(0.0, 0.0, 1.0))
    (work / "evaluation.json").write_text(json.dumps(
        {k: v for k, v in evaluation.items() if k != "report_html"}))
    model, model_meta = train.load_model(work / "model")
    test_rows, _ = read_split(str(work / "test"))
    build_package(model, model_meta, evaluation, train.load_images(test_rows.head(8), SIZE),
                  MODEL, work / "package")
    mv = register_package(str(work / "package"), str(work / "model"),
                          str(work / "evaluation.json"), str(work / "train"),
                          str(base / "registry"), MODEL, alias="", reference_sample=0)
    ModelRegistry(str(base / "registry")).set_alias(MODEL, "production", mv.version,
                                                    reason="trained from a labels CSV")
    return base / "lake"


def _csv_launcher(base: Path, runs: Path):
    """The local launcher as `mlops govern retrain` builds it, told only the stores (short
    trainings, a gate nothing passes: the run stays short and serves nothing)."""
    from pipelines.launchers import LocalLauncher

    return LocalLauncher(
        {"registry_uri": str(base / "registry"), "model_name": MODEL,
         "dataset_root": str(base / "datasets"), "work_root": str(base / "work"),
         "monitoring_uri": str(base / "monitoring"), "deploy_target": "local",
         "serving_root": str(base / "deployments"), "trial_epochs": 1, "epochs": 1,
         "min_accuracy": 1.01}, runs, wait=True, timeout_s=280)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_retraining_reads_a_labels_csv_lake_as_production_was_trained_from_it(
        tmp_path, monkeypatch):
    """Issue 23: after `mlops run training --data lake --labels-csv lake/labels.csv` the
    retraining could not read the lake (no labels CSV option) and trained at 64 px. The
    launcher, told only the stores, reads it through production's CSV, with the exported
    production images labelled by their folders, at production's 32 px."""
    from components.ingest.snapshot import load_snapshot
    from components.monitor.simulate import registered_model, simulate

    monkeypatch.setenv("MLOPS_HPO_SLOTS", "1")  # one trial: the lake is what is tested
    base = tmp_path / "world"
    lake = _train_production_from_a_labels_csv_lake(base)  # its lineage names this lake
    served = simulate(registered_model(str(base / "registry"), MODEL, 1),
                      str(base / "monitoring"), MODEL, "1", LakeSpec(n=6, size=SIZE, seed=9),
                      start_time=1_790_000_000.0, image_rate=1.0, label_share=1.0)
    assert served["labelled"] == 6
    launch = _csv_launcher(base, tmp_path / "runs").launch(
        {"kind": "manual", "reason": "a labels-CSV lake", "model": MODEL})
    result = json.loads((Path(launch["run_dir"]) / "result.json").read_text())
    assert launch["state"] == "succeeded", (
        result.get("error"), (Path(launch["run_dir"]) / "run.log").read_text()[-3000:])
    spec = json.loads((Path(launch["run_dir"]) / "spec.json").read_text())["arguments"]
    assert spec["labels_csv"] == str(lake / "labels.csv") and spec["layout"] == "csv"
    assert spec["image_size"] == SIZE
    # Every photo of the CSV and every exported production image were ingested.
    version = result["outputs"]["dataset_version"]
    manifest = load_snapshot(str(base / "datasets"), version)
    assert len(manifest) == 60 + 6
    assert manifest["key"].str.contains("/production/").sum() == 6
    trial = json.loads(next((base / "work" / "hpo").rglob("slot-0.json")).read_text())
    assert trial["hparams"]["image_size"] == SIZE


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_retraining_with_no_kept_image_says_so_and_does_not_train(
        tmp_path, monkeypatch, capsys):
    """Issue 23: labels for requests whose images the capture did not keep gave a retraining
    that trained, was rejected and ended 'succeeded'. It ends at the export, trains nothing,
    and `govern retrain --wait` and `govern episodes` say why and what to run next."""
    from components.cli import main
    from components.monitor.simulate import registered_model, simulate

    base = tmp_path / "world"
    _train_production_from_a_labels_csv_lake(base)
    simulate(registered_model(str(base / "registry"), MODEL, 1), str(base / "monitoring"),
             MODEL, "1", LakeSpec(n=4, size=SIZE, seed=9), start_time=1_790_000_000.0,
             image_rate=0.0, label_share=1.0)  # labelled, no image kept
    monkeypatch.setenv("MLOPS_HOME", str(base))
    monkeypatch.setenv("MLOPS_MONITORING_URI", str(base / "monitoring"))
    code = main(["govern", "retrain", "--reason", "the labels are in", "--wait",
                 "--retrain-arg", "trial_epochs=1", "--retrain-arg", "epochs=1"])
    out = capsys.readouterr()
    assert code == 1, out
    said = out.err.replace("\n", " ")
    assert "it did not train: Nothing new to train on: 0 new labelled production images" \
        in said
    assert "4 without a kept image" in said and "MLOPS_CAPTURE_IMAGE_RATE" in said
    assert "mlops govern retrain --reason WHY" in said
    # Nothing ingested or trained: one dataset version (production's), no trial.
    assert len(list((base / "datasets" / "published").iterdir())) == 1
    assert not (base / "work" / "hpo").exists()
    assert main(["govern", "episodes"]) == 0
    listing = capsys.readouterr().out
    assert " nothing_new" in listing and "not trained: Nothing new to train on" in listing
