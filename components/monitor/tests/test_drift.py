"""Drift detectors: both backends on real windows of the sample lake, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from components.monitor import drift
from components.monitor.checks import DRIFT_STATS
from components.monitor.tests.conftest import T0, simulate_window
from components.monitor.window import read_window


@pytest.fixture(scope="module")
def windows(monitor_setup, tmp_path_factory):
    """Real windows through the model: undrifted day, night (IR camera), blur (defocus)."""
    out = {}
    for n, condition in enumerate(("day", "night", "blur")):
        uri = str(tmp_path_factory.mktemp(condition))
        simulate_window(monitor_setup, uri, n=150, condition=condition, seed=300 + n)
        win = read_window(uri, monitor_setup.model, T0, T0 + 86400)
        names = [s for s in DRIFT_STATS if monitor_setup.reference.stats.get(s)]
        out[condition] = (win.embeddings(), win.stats(names), names)
    return out


@pytest.mark.parametrize("backend", drift.BACKENDS)
def test_mmd_finds_night_and_blur_and_not_day(monitor_setup, windows, backend):
    ref = np.asarray(monitor_setup.reference.embeddings)
    det = drift.make_detector("mmd", ref, backend=backend)
    answers = {c: det.predict(windows[c][0]) for c in windows}
    for answer in answers.values():
        assert set(answer["data"]) >= {"is_drift", "p_val", "distance", "threshold"}
        assert answer["meta"]["backend"] == backend
    assert answers["day"]["data"]["is_drift"] == 0
    assert answers["day"]["data"]["p_val"] >= 0.05
    assert answers["night"]["data"]["is_drift"] == 1
    assert answers["blur"]["data"]["is_drift"] == 1
    assert answers["night"]["data"]["distance"] > answers["day"]["data"]["distance"]


def test_both_backends_agree_on_the_same_windows(monitor_setup, windows):
    ref = monitor_setup.reference
    ref_stats = np.column_stack([ref.stats[s] for s in windows["day"][2]])
    verdicts = {}
    for backend in drift.BACKENDS:
        mmd = drift.make_detector("mmd", ref.embeddings, backend=backend)
        ks = drift.make_detector("ks", ref_stats, backend=backend, names=windows["day"][2])
        verdicts[backend] = {c: (mmd.predict(w[0])["data"]["is_drift"],
                                 ks.predict(w[1])["data"]["is_drift"],
                                 tuple(ks.predict(w[1])["data"]["drifted"]))
                             for c, w in windows.items()}
    assert verdicts["alibi"] == verdicts["torch"]
    assert verdicts["torch"]["day"] == (0, 0, ())
    assert verdicts["torch"]["night"][:2] == (1, 1)
    assert "brightness" in verdicts["torch"]["night"][2]
    assert "sharpness" in verdicts["torch"]["blur"][2]
    assert "brightness" not in verdicts["torch"]["blur"][2]  # blur keeps the exposure


@pytest.mark.parametrize("backend", drift.BACKENDS)
def test_saved_detector_answers_the_same(monitor_setup, windows, backend, tmp_path):
    det = drift.make_detector("mmd", monitor_setup.reference.embeddings, backend=backend)
    det.save(tmp_path / "det")
    loaded = drift.load_detector(tmp_path / "det")
    assert loaded.backend == backend and loaded.kind == "mmd"
    a, b = det.predict(windows["night"][0]), loaded.predict(windows["night"][0])
    assert a["data"]["is_drift"] == b["data"]["is_drift"] == 1
    ks = drift.make_detector("ks", np.asarray(windows["day"][1]), backend=backend,
                             correction="fdr", names=windows["day"][2])
    ks.save(tmp_path / "ks")
    again = drift.load_detector(tmp_path / "ks").predict(windows["night"][1])["data"]
    assert again["drifted"] == ks.predict(windows["night"][1])["data"]["drifted"]


def test_ks_corrections_control_the_family_of_tests():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 20))
    # 20 features with no drift: Bonferroni's cut-off is alpha / 20.
    answer = drift.make_detector("ks", ref, backend="torch").predict(rng.normal(size=(300, 20)))
    assert answer["data"]["threshold"] == pytest.approx(0.05 / 20)
    assert answer["data"]["is_drift"] == 0
    shifted = rng.normal(size=(300, 20))
    shifted[:, 3] += 1.0
    names = [f"s{i}" for i in range(20)]
    for correction in drift.CORRECTIONS:
        out = drift.make_detector("ks", ref, backend="torch", correction=correction,
                                  names=names).predict(shifted)
        assert out["data"]["drifted"] == ["s3"]


def test_bad_input_says_what_to_fix(monitor_setup, tmp_path):
    ref = np.asarray(monitor_setup.reference.embeddings)
    with pytest.raises(drift.DriftError, match="Unknown drift backend"):
        drift.make_detector("mmd", ref, backend="frouros")
    det = drift.make_detector("mmd", ref, backend="torch")
    with pytest.raises(drift.DriftError, match="features"):
        det.predict(np.zeros((10, ref.shape[1] + 1)))
    bad = np.array(ref[:10])
    bad[3, 0] = np.nan
    with pytest.raises(drift.DriftError, match="NaN"):
        det.predict(bad)
    with pytest.raises(drift.DriftError, match="no saved detector"):
        drift.load_detector(tmp_path)
    with pytest.raises(drift.DriftError, match="p_val"):
        drift.make_detector("mmd", ref, backend="torch", p_val=1.5)


def test_backend_setting_selects_the_implementation(monkeypatch, monitor_setup):
    monkeypatch.setenv("MLOPS_DRIFT_BACKEND", "torch")
    assert isinstance(drift.make_detector("mmd", monitor_setup.reference.embeddings),
                      drift.TorchMMD)
    monkeypatch.setenv("MLOPS_DRIFT_BACKEND", "alibi")
    assert isinstance(drift.make_detector("ks", monitor_setup.reference.embeddings[:, :3]),
                      drift.AlibiKS)


def test_mmd_tests_run_on_capped_torch_threads(monkeypatch):
    """One torch thread per MMD test unless MLOPS_TORCH_THREADS says otherwise; the
    process's own setting is back afterwards."""
    import torch

    from components.monitor.drift import DriftError, capped_torch_threads, make_detector

    before = torch.get_num_threads()
    monkeypatch.delenv("MLOPS_TORCH_THREADS", raising=False)
    with capped_torch_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("MLOPS_TORCH_THREADS", "3")
    with capped_torch_threads():
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    monkeypatch.setenv("MLOPS_TORCH_THREADS", "many")
    with pytest.raises(DriftError, match="Invalid MLOPS_TORCH_THREADS='many'"):
        make_detector("mmd", np.zeros((20, 2)), backend="torch")


def test_the_torch_backend_never_loads_alibi_and_alibi_prints_no_future_warning(tmp_path):
    """Finding 10 of issue 23: `--backend torch` loaded and built the reference's saved Alibi
    detector (then dropped it); `monitor run` printed torch's FutureWarning about Alibi
    Detect's torch.jit.script. Fresh processes: what a command imports and prints."""
    import subprocess
    import sys

    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = f"""
import sys, types, numpy as np
from components.monitor import core, drift
from components.monitor.checks import MonitorConfig
cfg = MonitorConfig()
det = drift.make_detector("mmd", np.load({str(tmp_path / "x.npy")!r}), backend="alibi",
                          p_val=cfg.p_val, n_permutations=cfg.n_permutations)
det.save({str(tmp_path / "det")!r})
"""
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "FutureWarning" not in out.stderr, out.stderr[-2000:]
    check = f"""
import sys, types
from components.monitor import core
from components.monitor.checks import MonitorConfig
ref = types.SimpleNamespace(detector_uri={str(tmp_path / "det")!r})
assert core._fit_or_load("mmd", ref, "torch", MonitorConfig()) is None
print("alibi_detect" in sys.modules)
assert core._fit_or_load("mmd", ref, "alibi", MonitorConfig()) is not None
"""
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]
