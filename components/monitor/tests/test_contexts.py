"""Day and night as contexts: each context's part of a window is judged against the
reference's images of that context. A camera that alternates between day and night raises no
alarm once the reference covers both, while a real change (the camera moved) is caught in
either context, and a context with too few requests is unknown, never judged against the
other's reference."""

from __future__ import annotations

from dataclasses import replace

import pytest

from components.monitor.core import run_monitoring
from components.monitor.tests.conftest import T0, simulate_window

HOUR = 3600.0
#: What alerts the product owner and starts retraining (the default policy's rules).
ALERTING = {"drift", "prediction_drift", "performance"}


@pytest.fixture(scope="module")
def day_and_night_reference(monitor_setup, dataset_dirs, tmp_path_factory):
    """A night retrain, small: the fixtures' tiny model trained on the day images and night
    images the camera sent, with a reference of the test images of both contexts. The
    monitor setup's simulated model becomes this one."""
    import pandas as pd

    from components.common.registry import ModelRegistry
    from components.common.storage import open_store
    from components.datagen.core import LakeSpec, generate
    from components.ingest.core import ingest
    from components.ingest.snapshot import read_split, write_split
    from components.monitor.reference import build_reference_files, load_reference
    from components.monitor.simulate import simulated_model
    from components.package.core import build_package
    from components.train import core as train

    base = tmp_path_factory.mktemp("night_data")
    generate(LakeSpec(n=240, size=32, seed=23, condition="night"), open_store(base / "lake"))
    result = ingest(str(base / "lake"), str(base / "ds"))
    for split in ("train", "test"):
        write_split(result, split, str(base / split))
    day_rows, meta = read_split(dataset_dirs[0])
    night_rows, _ = read_split(str(base / "train"))
    night_test, _ = read_split(str(base / "test"))
    rows = pd.concat([day_rows, night_rows], ignore_index=True)
    data = train.prepare(rows, meta["dataset_version"], 32)
    train.train(data, train.HParams(epochs=6, image_size=32, lr=3e-3), base / "model")
    model, model_meta = train.load_model(base / "model")
    evaluation = {"metrics": {"accuracy": 1.0, "macro": {"f1": 1.0}, "roc_auc": 1.0,
                              "count": 1, "per_class": {}},
                  "gate": {"bias": {"recall_gap": 0.0, "best_class": "cats",
                                    "worst_class": "dogs", "threshold": 0.1, "passed": True}}}
    build_package(model, model_meta, evaluation, train.load_images(night_test.head(10), 32),
                  "pets", base / "package")
    onnx = (base / "package" / "model.onnx").read_bytes()
    # As registration builds it: the test splits of both lakes, images the training run
    # never fitted or selected on (the day one's class mix, 62% dogs, is not the training
    # split's 51%: the drift tests use it in the training split's shares).
    day_test, _ = read_split(dataset_dirs[1])
    held_out = pd.concat([day_test, night_test], ignore_index=True)
    files = build_reference_files(onnx, rows, meta["dataset_version"], detector=False,
                                  test_rows=held_out)
    registry_uri = str(tmp_path_factory.mktemp("registry_both"))
    reg = ModelRegistry(registry_uri)
    mv = reg.register(monitor_setup.model, {"model.onnx": onnx,
                                            **{f"reference/{k}": v for k, v in files.items()}},
                      {"dataset_version": meta["dataset_version"]})
    ref = load_reference(registry_uri, monitor_setup.model, mv.version,
                         cache_dir=tmp_path_factory.mktemp("refcache_both"))
    return ref, replace(monitor_setup, sim=simulated_model(onnx))


def _judge(setup, ref, uri, start, hours=1.0):
    return run_monitoring(setup.model, setup.registry_uri, uri, start=start,
                          end=start + hours * HOUR, backend="torch", reference=ref,
                          explain=False, write=False)


def _alarms(verdict) -> list[str]:
    return [c.key for c in verdict.checks if c.status == "alarm" and c.kind in ALERTING]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_day_night_day_night_is_quiet_and_a_moved_camera_alarms_in_each_context(
        day_and_night_reference, tmp_path):
    ref, monitor_setup = day_and_night_reference
    counts = ref.context_counts()
    assert counts["day"] >= 40 and counts["night"] >= 40, counts
    uri = str(tmp_path / "store")
    timeline = ["day", "night", "day", "night"]
    for i, condition in enumerate(timeline):
        simulate_window(monitor_setup, uri, n=100, condition=condition, seed=200 + i,
                        label_share=0.3, start=T0 + i * HOUR, seconds_apart=30)
    for i, condition in enumerate(timeline):
        v = _judge(monitor_setup, ref, uri, T0 + i * HOUR)
        assert v.contexts() == [condition], (condition, v.contexts())
        assert _alarms(v) == [], (i, condition, [(c.key, c.detail) for c in v.checks
                                                 if c.status == "alarm"])
        emb = v.check("drift.embedding", condition)
        assert emb.status == "ok" and emb.extra["reference_context"] == condition
    # The camera is knocked and looks down the gravel path: caught by day and by night.
    for i, condition in enumerate(("day", "night")):
        start = T0 + (10 + i) * HOUR
        simulate_window(monitor_setup, uri, n=100, condition=condition, seed=300 + i,
                        view="moved", start=start, seconds_apart=30)
        v = _judge(monitor_setup, ref, uri, start)
        alarms = _alarms(v)
        assert any(a.startswith("drift.") and a.endswith(f"[{condition}]") for a in alarms), \
            (condition, [(c.key, c.status, c.detail) for c in v.checks])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_context_with_too_few_requests_is_unknown_not_judged_against_another(
        day_and_night_reference, tmp_path):
    ref, monitor_setup = day_and_night_reference
    uri = str(tmp_path / "store")
    simulate_window(monitor_setup, uri, n=80, condition="day", seed=401, start=T0,
                    seconds_apart=30)
    simulate_window(monitor_setup, uri, n=8, condition="night", seed=402,
                    start=T0 + 0.75 * HOUR, seconds_apart=30)
    v = _judge(monitor_setup, ref, uri, T0)
    assert v.check("drift.embedding", "day").status == "ok"
    night = [c for c in v.checks if c.context == "night"]
    assert night and all(c.status == "unknown" for c in night)
    assert "8 night requests: too few" in night[0].detail


def test_the_verdict_line_says_each_context_s_status(capsys):
    """`mlops monitor status` said "ALARM" for a window whose day part was fine; the
    product owner had to read every check's [context] to find out which part alarmed."""
    from components.cli.monitor import print_verdict
    from components.monitor.contract import Check, Verdict

    n = {"n_context": 182}
    v = Verdict("pet-classifier", "1", "2026-12-07T11:00:00Z", "2026-12-07T12:00:00Z", "w1",
                272, 0, [
                    Check("traffic.requests", "traffic", 272, 30, "ok", ""),
                    Check("drift.embedding", "drift", 0.6, 0.05, "ok", "", extra=n,
                          context="day"),
                    Check("performance.accuracy", "performance", None, 0.8, "unknown", "",
                          context="day"),
                    Check("drift.embedding", "drift", 0.0, 0.05, "alarm", "moved",
                          extra={"n_context": 90}, context="night")])
    print_verdict(v)
    out = capsys.readouterr().out
    assert "  by camera context: day ok (182 requests), night ALARM (90 requests)\n" in out
