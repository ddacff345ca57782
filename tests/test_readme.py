"""The README's command block, run as written, in order, in a fresh folder: it does what the
README says (a second lake ingested and versioned, a model trained, registered and released,
its reports found, production answering and captured, a monitoring verdict, an audit)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str = "### From the command line") -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under {heading!r}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_command_block_does_what_it_says(tmp_path):
    block = readme_block()
    for step in ("mlops run training --data lake --labels-csv", "mlops monitor run",
                 "mlops govern retrain", "mlops govern test-alert", "mlops trace"):
        assert step in block, step
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLOPS_", "AWS_", "MINIO_"))}
    env["HOME"] = str(tmp_path)  # nothing from ~/.mlops: the block's stores are ~/.mlops here
    # The README's one command style: `mlops` on PATH (the quick start exports .venv/bin).
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    script = tmp_path / "readme.sh"
    script.write_text("set -euo pipefail\n" + block)
    try:
        proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=840)
    finally:  # never leave servers behind, whatever failed
        subprocess.run([sys.executable, "-m", "components.cli", "deploy", "stop"],
                       cwd=tmp_path, env=env, capture_output=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in out + proc.stderr
    # The second lake became a dataset version, in the same home the later commands read.
    assert "Wrote 800 images" in out
    version = re.search(r"Dataset version: (\w+)", out).group(1)
    assert (tmp_path / ".mlops" / "datasets" / "versions" / version).is_dir()
    # Trained, blessed, registered, released; its reports are files a browser opens.
    assert "Quality gate: blessed" in out and "Registered: pet-classifier version 1" in out
    assert "Release: deployed" in out
    curves = re.findall(r"(\S+/curve\.html)", out)
    assert curves and all(Path(p).is_file() for p in curves)
    # The registry commands show the version, its lineage and the alias history.
    assert re.search(r"pet-classifier\tv1\tdataset " + version, out)
    assert f'"dataset_version": "{version}"' in out
    assert "-> v1" in out and "production: deployed" in out
    # Production answered the three photos, each with its request id, was captured, and the
    # monitor judged it.
    answers = re.findall(r"lake/photos/\d+\.jpg\t(?:cats|dogs)\t[0-9.]+\t(\S+)", out)
    assert len(answers) == 3, out[-3000:]
    assert re.search(r"pet-classifier version 1: \w+", out)
    verdict = out[out.index("traffic.requests"):]
    requests = int(re.search(r"traffic\.requests\s+(\d+)", verdict).group(1))
    assert requests >= 3, verdict[:500]  # the three photos at least (the release's probes too)
    assert "drift.embedding" in verdict
    assert "stopped production" in out
    # The first answer traced to everything behind it, from the stores alone.
    assert f"request {answers[0]}/0: answered" in out
    assert f"dataset       {version}" in out and "pipeline run  pet-classifier-training-" in out
    assert "label         none yet" in out
    # A test alert says where to configure the webhooks; a manual retrain is recorded with the
    # command that starts it, and audited.
    assert "not configured: set MLOPS_ALERT_PRODUCT_OWNER_URL" in out
    assert re.search(r"mlops govern start-episode v1-\d{4}", out)
    assert "trigger" in out and "new camera at the gate" in out
    assert "alias_move" in out and "release" in out
