"""Every notebook runs top to bottom in a real Jupyter kernel against the current code."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# What each notebook must show a reader (its printed or displayed results).
EXPECTED = {
    "01_data_lake_and_ingestion.ipynb": ["ingested", "quarantined"],
    "02_serving_and_release.ipynb": ["Application test", "PASSED", "Release of pet-classifier",
                                     "production alias ->", "true "],
    "03_monitoring.ipynb": ["Verdict: alarm", "drift.embedding", "brightness", "labelled",
                            "full report:"],
    "04_continuous_training.ipynb": ["retraining gate", "a second export writes nothing: True",
                                     "trigger in lineage", "served accuracy on night frames"],
}


# How many figures each notebook must show at least (plots where a person would rather look).
FIGURES = {"01_data_lake_and_ingestion.ipynb": 2, "02_serving_and_release.ipynb": 3,
           "03_monitoring.ipynb": 6, "04_continuous_training.ipynb": 2}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
@pytest.mark.timeout(600)  # 04 runs the continuous-training pipeline
def test_notebook_runs(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=480, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {})) for o in outputs)
    missing = [phrase for phrase in EXPECTED[path.name] if phrase not in text]
    assert not missing, f"{path.name} does not show {missing}"
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= FIGURES.get(path.name, 1), f"{path.name} shows {len(figures)} figures"
    # Library warnings are plain text lines, not red stderr boxes.
    assert not [o for o in outputs if o.get("name") == "stderr" and "WARNING" in o.get("text", "")]
