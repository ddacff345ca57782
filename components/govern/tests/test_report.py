"""The compliance report holds what an auditor asks for: model card, lineage back to the lake,
test and bias results, application test, release decisions with measurements, approvals and
holds, monitoring since release with plots, alerts and actions."""

from __future__ import annotations

import subprocess
import sys

from components.common.registry import ModelRegistry
from components.common.storage import open_store
from components.govern.core import govern
from components.govern.policy import parse_policy
from components.monitor.capture import CaptureConfig, CaptureWriter
from components.monitor.contract import Check, Verdict
from components.monitor.feedback import LabelRequest, LabelStore

MODEL = "pet-classifier"
CARD = "# Model card: pet-classifier\n\nIntended use: tell cats from dogs in the park camera.\n"


def _lineage(n: int) -> dict:
    """A lineage as the register step writes it (components/register/core.py)."""
    return {"dataset_version": f"ds{n}abc", "dataset_snapshot": f"s3://mlops/datasets/ds{n}",
            "dataset_manifest": f"s3://mlops/datasets/ds{n}/manifest.csv",
            "dataset_source": "s3://lake/petpark", "code_version": "git:0123abcd",
            "pipeline_run": f"pet-classifier-training-run-{n}", "arch": "small_cnn",
            "hyperparameters": {"lr": 0.003, "batch_size": 32},
            "training": {"best_epoch": 7, "val_accuracy": 0.97, "history": []},
            "search_trials": [{"trial": 0, "hparams": {"lr": 0.003}, "val_accuracy": 0.96}],
            "metrics": {"accuracy": 0.9772, "macro_f1": 0.9771, "roc_auc": 0.9997,
                        "per_class": {"cats": {"precision": 0.98, "recall": 0.95, "f1": 0.965,
                                               "support": 200},
                                      "dogs": {"precision": 0.95, "recall": 0.998, "f1": 0.97,
                                               "support": 195}},
                        "recall_gap": 0.0479},
            "gate": {"blessed": True, "champion_version": n - 1 or None},
            "parent_version": n - 1 or None,
            "trigger": {"episode": "v1-0001", "verdict": "w-night"} if n == 2 else None}


def _setup(tmp_path, receiver):
    registry = ModelRegistry(str(tmp_path / "registry"))
    for n in (1, 2):
        registry.register(MODEL, {"model.onnx": b"onnx", "MODEL_CARD.md": CARD.encode()},
                          _lineage(n))
    registry.set_alias(MODEL, "production", 1, reason="deployed in production")
    registry.record_release(MODEL, {"model": MODEL, "version": 1, "environment": "production",
                                    "decision": "deployed", "previous_version": None,
                                    "steps": [], "reasons": []})
    registry.approve(MODEL, 2, note="night images checked by QA", actor="qa-lead")
    step = {"percent": 10, "passed": True, "reasons": [],
            "canary": {"errors": 0, "requests": 100, "p95_ms": 21.4, "accuracy": 0.98},
            "stable": {"errors": 0, "requests": 100, "p95_ms": 22.0, "accuracy": 0.61}}
    registry.set_alias(MODEL, "production", 2, reason="promoted in production")
    registry.record_release(MODEL, {"model": MODEL, "version": 2, "environment": "production",
                                    "decision": "promoted", "previous_version": 1,
                                    "steps": [step, {**step, "percent": 50}], "reasons": []})
    registry.store.put_json(f"{MODEL}/apptests/2/00000001.json", {
        "passed": True, "live_accuracy": 0.977, "offline_accuracy": 0.977, "images": 395,
        "load": {"error_rate": 0.0, "p95_ms": 4.7}, "reasons": []})
    store = str(tmp_path / "monitoring")
    policy = parse_policy({"version": 1, "recipients": {"po": {"format": "slack",
                                                               "url": receiver.url}},
                           "rules": [{"name": "data-drift", "match": {"kind": "drift"},
                                      "actions": [{"type": "alert", "to": "po"}]}]})
    for i, (p, acc, status) in enumerate([(0.4, 0.97, "ok"), (0.01, 0.93, "alarm"),
                                          (0.3, 0.96, "ok")]):
        v = Verdict(MODEL, "2", f"2099-01-0{i + 1}T00:00:00+00:00",
                    f"2099-01-0{i + 2}T00:00:00+00:00", f"w{i}", 500, 60, [
                        Check("drift.embedding", "drift", p, 0.05, status, "MMD test",
                              extra={"p_val": p}),
                        Check("performance.accuracy", "performance", acc, 0.85, "ok", "",
                              extra={"n_labelled": 60}),
                        Check("telemetry.p95_latency", "telemetry", 20.0 + i, 250.0, "ok", "")])
        open_store(store).put_json(f"monitoring/{MODEL}/history/{v.window_end}-{v.run_id}.json",
                                   v.to_dict())
        govern(v, policy, store_uri=store)
    registry.place_hold(MODEL, "accuracy collapse drill")
    writer = CaptureWriter(CaptureConfig(uri=store, image_rate=0.0), MODEL)
    for n in range(5):  # requests answered by version 2; one got a label later
        writer.submit({"request_id": f"req-{n + 5}", "index": 0, "time": 4070908800.0 + n,
                       "model": MODEL, "model_version": "2", "label": "cats",
                       "probabilities": {"cats": 0.9, "dogs": 0.1}, "latency_ms": 3.0})
    assert writer.close(30)
    LabelStore(store, MODEL, ["cats", "dogs"]).add(LabelRequest("req-7", "dogs", 0, "qa"))
    return registry, store


def test_report_content(tmp_path, receiver):
    from components.govern.report import write_report

    registry, store = _setup(tmp_path, receiver)
    paths = write_report(MODEL, "@production", registry.uri, store, str(tmp_path / "out"))
    md = open(paths["markdown"]).read()
    page = open(paths["html"]).read()
    assert "Compliance report: pet-classifier version 2" in md
    assert "Intended use: tell cats from dogs" in md  # the model card
    for fact in ("ds2abc", "s3://lake/petpark", "git:0123abcd", "pet-classifier-training-run-2",
                 "small_cnn", "batch_size=32, lr=0.003", "w-night"):  # lineage, with the trigger
        assert fact in md, fact
    assert "| dogs | 0.95 | 0.998 | 0.97 | 195 |" in md  # per-class results
    assert "| recall gap (bias) | 0.0479 |" in md
    assert "| yes | 0.977 | 0.977 | 0 | 4.7 | 395 |" in md  # application test
    assert "promoted" in md and "| 2 | 50% | 0 | 21.4 | 22 | 0.98 | 0.61 | pass |" in md
    assert "qa-lead" in md and "night images checked by QA" in md  # approval
    assert "accuracy collapse drill" in md  # the hold
    # Monitoring since release: the three windows, the alarm named.
    monitoring = md.split("## 7. ")[1].split("## 8. ")[0]
    assert monitoring.count("| 2099-01-0") == 3 and "drift.embedding=0.01 (alarm)" in md
    # Alerts and actions; the alert was about the drifting window.
    assert "| alert |" in md and "| resolved |" in md
    assert "data:image/png;base64," in page and page.count("<figure>") == 2
    # For a person: the model card rendered (its headings one level below the section's), the
    # lineage's trigger and the trials as tables of their fields (never JSON), and no table
    # followed by an unnamed "None recorded.".
    assert "<h2>Model card: pet-classifier</h2>" in page and "# Model card" not in page
    assert "<th>episode</th><td>v1-0001</td>" in page
    assert "<th>lr</th><td>0.003</td>" in page
    assert '{"' not in page and "None recorded" not in md
    # A sample of the version's requests traced to everything behind them.
    assert "| req-7/0 |" in md and "| dogs by qa (wrong) |" in md, md
    assert "ds2abc from s3://lake/petpark" in md and "pet-classifier-training-run-2" in md
    assert (tmp_path / "out" / "pet-classifier-v2-monitoring.png").stat().st_size > 5000


def test_report_from_the_command_line(tmp_path, receiver):
    registry, store = _setup(tmp_path, receiver)
    out = subprocess.run([sys.executable, "-m", "components.cli", "govern", "report",
                          f"{MODEL}@1", "--registry", registry.uri, "--store", store,
                          "--out", str(tmp_path / "reports")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pet-classifier-v1-compliance.html" in out.stdout
    md = (tmp_path / "reports" / "pet-classifier-v1-compliance.md").read_text()
    assert "version 1" in md and "deployed" in md
    missing = subprocess.run([sys.executable, "-m", "components.cli", "govern", "report",
                              f"{MODEL}@staging", "--registry", registry.uri, "--store", store],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no alias 'staging'" in missing.stderr
