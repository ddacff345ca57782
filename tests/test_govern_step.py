"""The govern step (pipelines/steps.py): its function on a real verdict artifact, and the
monitoring pipeline compiled with it as the last step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from components.common.governance import GovernanceStore
from components.govern.alerts import AlertBook
from components.govern.trigger import Episodes
from components.monitor.contract import Check, Verdict
from tests.support import WebhookReceiver


def test_govern_verdict_on_a_verdict_artifact(tmp_path):
    from pipelines.steps import govern_verdict

    v = Verdict("pets", "4", "2026-11-20T00:00:00+00:00", "2026-11-20T01:00:00+00:00", "w1",
                300, 0, [Check("drift.embedding", "drift", 0.001, 0.05, "alarm", "moved")])
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps(v.to_dict()))
    actions = dsl.Markdown(uri=str(tmp_path / "actions.md"))
    actions.path = str(tmp_path / "actions.md")
    verdict = dsl.Artifact(uri=str(path))
    verdict.path = str(path)
    with WebhookReceiver(path="/hook") as receiver:
        policy = yaml.safe_dump({"version": 1, "recipients": {"po": {"format": "slack",
                                                                      "url": receiver.url}},
                                 "rules": [{"name": "data-drift", "match": {"kind": "drift"},
                                            "actions": [{"type": "alert", "to": "po"},
                                                        "retrain"]}]})
        store = str(tmp_path / "monitoring")
        out = govern_verdict.python_func(verdict=verdict, monitoring_uri=store,
                                         registry_uri=str(tmp_path / "registry"), actions=actions,
                                         model_name="pets", policy=policy)
        assert out.alerts == 1 and out.retrain_started and not out.rolled_back
        text = (tmp_path / "actions.md").read_text()
        assert "| alert | data-drift | drift.embedding |" in text
        assert actions.metadata["actions"] == ["alert", "retrain"]
        assert len(receiver.received) == 1
        assert len(AlertBook(GovernanceStore(store, "pets")).alerts()) == 1
        (episode,) = Episodes(GovernanceStore(store, "pets")).all()
        assert episode["verdict"] == "w1" and episode["launch"]["state"] == "not_started"


def test_monitoring_pipeline_ends_with_the_govern_step(tmp_path):
    from kfp import compiler

    from pipelines.monitoring import monitoring_pipeline

    path = tmp_path / "monitoring.yaml"
    compiler.Compiler().compile(monitoring_pipeline, str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    gov = next(t for name, t in tasks.items() if name.startswith("govern-verdict"))
    source = gov["inputs"]["artifacts"]["verdict"]["taskOutputArtifact"]
    assert source["producerTask"].startswith("monitor-window")
    assert source["outputArtifactKey"] == "verdict"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"policy", "deploy_target", "govern_launcher", "kfp_host"} <= set(params)
    # Compiling needs no heavy import: the step's module imports kfp only.
    source_text = (Path(__file__).resolve().parents[1] / "pipelines" / "steps.py").read_text()
    assert "import torch" not in source_text and "onnxruntime" not in source_text


@pytest.mark.timeout(180)
def test_govern_step_runs_under_kfp_local(tmp_path, monkeypatch):
    from components.govern.tests.retrain_pipeline import govern_stand_in
    from components.monitor.contract import Check, Verdict
    from components.monitor.core import append_history
    from pipelines import PIPELINES
    from pipelines.local import run_local

    monkeypatch.setitem(PIPELINES, "govern-stand-in",
                        ("components.govern.tests.retrain_pipeline", "govern_stand_in"))
    assert govern_stand_in  # the pipeline is importable without heavy modules
    store = str(tmp_path / "monitoring")
    # The window before, in the monitoring history: the same drift (the default policy acts
    # on drift seen in two windows in a row).
    append_history(store, Verdict(
        "pet-classifier", "3", "2026-11-19T23:30:00+00:00", "2026-11-20T00:30:00+00:00",
        "kfp-local-w0", 300, 0, [Check("drift.embedding", "drift", 0.002, 0.05, "alarm",
                                       "moved")], created="2026-11-20T00:30:05+00:00"))
    outputs = run_local("govern-stand-in", {"monitoring_uri": store,
                                            "registry_uri": str(tmp_path / "registry")},
                        tmp_path / "runs")
    assert outputs["Output"] == 1  # one alert (kept undelivered: no webhook configured)
    (episode,) = Episodes(GovernanceStore(store, "pet-classifier")).all()
    assert episode["verdict"] == "kfp-local-w1"
