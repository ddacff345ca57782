"""The monitoring pipeline under kfp.local, its compiled YAML, and ``mlops monitor``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.monitor.core import read_history
from components.monitor.tests.conftest import T0, simulate_window

REPO = Path(__file__).resolve().parents[3]


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_monitoring_pipeline_runs_locally(monitor_setup, tmp_path):
    from pipelines.local import run_local

    store = str(tmp_path / "monitoring")
    simulate_window(monitor_setup, store, n=120, condition="night", seed=61, label_share=0.3,
                    image_rate=0.1)
    outputs = run_local("monitoring", {
        "registry_uri": monitor_setup.registry_uri, "monitoring_uri": store,
        "start": _iso(T0), "end": _iso(T0 + 6 * 3600), "backend": "torch",
        "settings_json": json.dumps({"p_val": 0.01})}, tmp_path / "runs")
    assert outputs["status"] == "alarm"
    verdict = json.loads(Path(outputs["verdict"].path).read_text())
    checks = {c["name"]: c for c in verdict["checks"]}
    assert checks["drift.embedding"]["status"] == "alarm"
    assert checks["drift.embedding"]["threshold"] == 0.01  # the settings reached the checks
    # The UI's metadata names the context that moved (the window is all night frames).
    assert outputs["verdict"].metadata["checks"]["drift.statistics[night]"] == "alarm"
    assert "drift.embedding.night" in outputs["metrics"].metadata
    assert "Saliency gallery" in Path(outputs["report"].path).read_text()
    assert "| drift.embedding[night] | alarm |" in Path(outputs["summary"].path).read_text()
    [entry] = read_history(store, monitor_setup.model)
    assert entry.run_id == verdict["run_id"]


def test_monitoring_pipeline_compiles(tmp_path):
    from kfp import compiler

    from pipelines import load

    path = tmp_path / "monitoring.yaml"
    compiler.Compiler().compile(load("monitoring"), str(path))
    spec = next(d for d in yaml.safe_load_all(path.read_text()) if d and "deploymentSpec" in d)
    assert spec["pipelineInfo"]["name"] == "pet-classifier-monitoring"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["backend"]["defaultValue"] == "alibi"
    assert {"registry_uri", "monitoring_uri", "start", "end", "prometheus_url"} <= set(params)
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {"verdict", "metrics", "report", "summary"} <= set(outputs)


def _mlops(*args, env=None):
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_run_status_report(monitor_setup, tmp_path):
    store = str(tmp_path / "monitoring")
    simulate_window(monitor_setup, store, n=60, condition="day", seed=71)
    common = ["--registry", monitor_setup.registry_uri, "--store", store]
    run = _mlops("monitor", "run", *common, "--start", _iso(T0), "--end", _iso(T0 + 3600),
                 "--backend", "torch", "--no-explain")
    assert run.returncode == 0, run.stderr
    assert "pet-classifier version 1:" in run.stdout and "drift.embedding" in run.stdout
    status = _mlops("monitor", "status", *common)
    assert status.returncode == 0 and "60 requests" in status.stdout
    report = _mlops("monitor", "report", *common)
    assert report.returncode == 0 and "report.html" in report.stdout
    # A user's mistakes: one line that names what to fix, exit code 2, no traceback.
    bad = _mlops("monitor", "run", *common, "--settings", '{"p_value": 0.1}')
    assert bad.returncode == 2 and "Unknown monitoring settings" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = _mlops("monitor", "run", *common, "--start", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    empty = _mlops("monitor", "status", "--store", str(tmp_path / "none"))
    assert empty.returncode == 1 and "mlops monitor run" in empty.stdout
