"""run_monitoring on real windows of the sample lake: each check on drifted and undrifted
traffic, both backends, empty windows, concurrent runs, telemetry faults, the report."""

from __future__ import annotations

import json
import threading

import pytest

from components.common.storage import open_store, read_uri
from components.monitor.core import MonitorError, read_history, run_monitoring
from components.monitor.tests.conftest import T0, simulate_window

HOUR = 3600.0


def _run(setup, uri, start=T0, end=T0 + 6 * HOUR, **kw):
    kw.setdefault("backend", "torch")
    return run_monitoring(setup.model, setup.registry_uri, uri, start=start, end=end, **kw)


@pytest.fixture(scope="module")
def day_and_night(monitor_setup, tmp_path_factory):
    """One store: a day window (T0, 3 h) then a night window (T0 + 3 h, 3 h), half labelled,
    a fifth of the images kept."""
    uri = str(tmp_path_factory.mktemp("day_night"))
    simulate_window(monitor_setup, uri, n=160, condition="day", seed=11, label_share=0.5,
                    image_rate=0.2, seconds_apart=60)
    simulate_window(monitor_setup, uri, n=160, condition="night", seed=12, label_share=0.5,
                    image_rate=0.2, seconds_apart=60, start=T0 + 3 * HOUR)
    return uri


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["alibi", "torch"])
def test_day_is_quiet_and_night_alarms(monitor_setup, day_and_night, backend):
    day = _run(monitor_setup, day_and_night, T0, T0 + 3 * HOUR, backend=backend,
               explain=False, write=False)
    night = _run(monitor_setup, day_and_night, T0 + 3 * HOUR, T0 + 6 * HOUR, backend=backend,
                 explain=False, write=False)
    assert day.n_requests == night.n_requests == 160
    assert day.n_labelled > 50
    for name in ("drift.embedding", "drift.statistics", "prediction_drift.class_shares",
                 "integrity.bad_records", "integrity.out_of_range", "integrity.image_modes",
                 "performance.recall_gap"):
        assert day.check(name).status == "ok", (name, day.check(name).detail)
    assert day.check("drift.embedding").extra["backend"] == backend
    # Night: the IR camera moved every statistic of the exposure, the embeddings, the class
    # shares and the accuracy.
    emb = night.check("drift.embedding")
    assert emb.status == "alarm" and emb.value < 0.05 and emb.extra["distance"] > 0
    stats = night.check("drift.statistics")
    assert stats.status == "alarm" and "brightness" in stats.extra["drifted"]
    assert "brightness" in stats.detail
    # The range check compares with the reference's [min, max] (the test split's): the IR
    # frames are darker than most day images but not all of the darkest, so it is the KS
    # test that names brightness as moved; the range check's worst statistic is brightness.
    per_stat = night.check("integrity.out_of_range").extra["per_stat"]
    assert max(per_stat, key=lambda k: per_stat[k]["share"]) == "brightness"
    acc_day = day.check("performance.accuracy")
    acc_night = night.check("performance.accuracy")
    assert acc_night.value < acc_day.value - 0.1
    assert acc_night.status == "alarm" and acc_night.extra["ci_high"] < acc_night.threshold
    assert acc_night.extra["ci_low"] < acc_night.value < acc_night.extra["ci_high"]
    assert set(acc_night.extra["per_class"]) == {"cats", "dogs"}
    assert night.check("performance.estimated_accuracy").extra["estimated"] is True
    assert night.status == "alarm"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_blur_and_class_mix(monitor_setup, tmp_path):
    blur_uri, mix_uri = str(tmp_path / "blur"), str(tmp_path / "mix")
    simulate_window(monitor_setup, blur_uri, n=150, condition="blur", seed=21)
    simulate_window(monitor_setup, mix_uri, n=200, cat_fraction=0.9, seed=22)
    blur = _run(monitor_setup, blur_uri, explain=False, write=False)
    moved = blur.check("drift.statistics").extra["drifted"]
    assert "sharpness" in moved and "brightness" not in moved
    assert blur.check("drift.embedding").status == "alarm"
    mix = _run(monitor_setup, mix_uri, explain=False, write=False)
    pred = mix.check("prediction_drift.class_shares")
    assert pred.status == "alarm" and pred.extra["class"] == "cats"
    assert pred.extra["shares"]["cats"] > pred.extra["prior"]["cats"] + 0.2
    assert "more" in pred.detail
    # No labels arrived: measured performance is unknown, the estimate is there and marked.
    assert mix.check("performance.accuracy").status == "unknown"
    est = mix.check("performance.estimated_accuracy")
    assert est.value is not None and est.extra["estimated"] is True
    assert mix.n_labelled == 0


def test_empty_window_is_a_no_traffic_verdict(monitor_setup, store_uri):
    uri = store_uri
    result = _run(monitor_setup, uri, full=True)
    v = result.verdict
    assert v.status == "unknown" and v.n_requests == 0
    assert v.check("traffic.requests").status == "unknown"
    assert "no traffic" in v.check("traffic.requests").detail
    assert "may not be written yet" in v.check("traffic.requests").detail  # why, maybe
    assert all(c.status == "unknown" for c in v.checks if c.kind in ("drift", "telemetry"))
    # It is recorded like any run, with its report.
    [entry] = read_history(uri, monitor_setup.model)
    assert entry.run_id == v.run_id and entry.status == "unknown"
    assert b"no traffic" in read_uri(v.report_uri)


def test_two_runs_at_once_write_two_history_entries(monitor_setup, store_uri):
    uri = store_uri
    simulate_window(monitor_setup, uri, n=40, seed=31)
    results, errors = [], []

    def one():
        try:
            results.append(_run(monitor_setup, uri, explain=False))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    history = read_history(uri, monitor_setup.model)
    assert sorted(v.run_id for v in history) == sorted(v.run_id for v in results)
    assert len({v.run_id for v in history}) == 2
    store = open_store(uri)
    for obj in store.list(f"monitoring/{monitor_setup.model}/history"):
        json.loads(store.get(obj.key))  # whole JSON documents, never torn


def test_unreachable_telemetry_is_unknown_not_a_failure(monitor_setup, tmp_path):
    uri = str(tmp_path / "telemetry")
    simulate_window(monitor_setup, uri, n=40, seed=41)
    v = run_monitoring(monitor_setup.model, monitor_setup.registry_uri, uri,
                       start=T0, end=None, backend="torch", explain=False, write=False,
                       metrics_url="http://127.0.0.1:9", prometheus_url="")
    tele = [c for c in v.checks if c.kind == "telemetry"]
    assert {c.name for c in tele} >= {"telemetry.request_rate", "telemetry.error_rate",
                                      "telemetry.p95_latency", "telemetry.cpu",
                                      "telemetry.memory"}
    assert all(c.status == "unknown" and c.value is None for c in tele)
    assert v.check("integrity.undecodable").status == "unknown"
    assert v.n_requests == 40  # the rest of the run went on
    prom = run_monitoring(monitor_setup.model, monitor_setup.registry_uri, uri, start=T0,
                          end=T0 + HOUR, backend="torch", explain=False, write=False,
                          prometheus_url="http://127.0.0.1:9")
    assert prom.check("telemetry.p95_latency").status == "unknown"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_report_gallery_and_slices(monitor_setup, day_and_night):
    result = _run(monitor_setup, day_and_night, T0, T0 + 6 * HOUR, full=True, gallery_size=3)
    v, ex = result.verdict, result.explanations
    groups = {e["group"] for e in ex["gallery"]}
    assert groups == {"least confident", "misclassified", "random"}
    assert all(ex["images"][e["file"]].startswith(b"\x89PNG") for e in ex["gallery"])
    night = next(r for r in ex["slices"]["brightness"] if r["slice"].startswith("night"))
    day = next(r for r in ex["slices"]["brightness"] if r["slice"].startswith("day"))
    assert night["accuracy"] < day["accuracy"] and night["flagged"]
    assert {r["slice"] for r in ex["slices"]["predicted class"]} <= {"cats", "dogs"}
    html = read_uri(v.report_uri).decode()
    # each context's check has its row: the anchor names the context
    assert v.check("drift.embedding", "night").evidence == \
        f"{v.report_uri}#drift.embedding[night]"
    assert "id='drift.embedding[night]'" in html and "id='drift.embedding[day]'" in html
    for part in ("Verdict", "drift.embedding", "Saliency gallery", "Error analysis by slice",
                 "data:image/png;base64"):
        assert part in html
    assert html.count("data:image/png;base64") >= 4 + len(ex["gallery"])
    folder = v.report_uri.rsplit("/", 1)[0]
    assert "| drift.embedding[night] |" in read_uri(f"{folder}/summary.md").decode()
    assert read_uri(f"{folder}/{ex['gallery'][0]['file']}").startswith(b"\x89PNG")


def test_version_without_reference_is_built_or_named(monitor_setup, tmp_path):
    from components.common.registry import ModelRegistry

    reg = ModelRegistry(monitor_setup.registry_uri)
    files = {"model.onnx": reg.read_file(monitor_setup.model, monitor_setup.version,
                                         "model.onnx")}
    mv = reg.register(monitor_setup.model, files, {"note": "no lineage, no reference"})
    uri = str(tmp_path / "noref")
    from components.datagen.core import LakeSpec
    from components.monitor.simulate import simulate

    simulate(monitor_setup.sim, uri, monitor_setup.model, str(mv.version),
             LakeSpec(n=5, size=32, seed=3), start_time=T0)
    with pytest.raises(ValueError, match="no monitoring reference"):
        _run(monitor_setup, uri, version=mv.version)


def test_bad_requests_say_what_to_fix(monitor_setup, tmp_path):
    with pytest.raises(MonitorError, match="not after start"):
        _run(monitor_setup, str(tmp_path), T0 + 10, T0)
    with pytest.raises(MonitorError, match="version"):
        run_monitoring("no-such-model", monitor_setup.registry_uri, str(tmp_path))
    with pytest.raises(ValueError, match="Unknown monitoring settings"):
        _run(monitor_setup, str(tmp_path), config={"p_value": 0.01})
    with pytest.raises(ValueError, match="Unknown drift backend"):
        _run(monitor_setup, str(tmp_path), backend="nannyml")


def test_the_references_saved_detector_is_used_when_it_matches(monitor_setup, tmp_path,
                                                               caplog):
    import dataclasses
    import logging

    from components.monitor import drift

    # Fitted as registration fits it: on the sample in the training split's class shares.
    det = drift.make_detector("mmd", monitor_setup.reference.at_prior().embeddings,
                              backend="torch")
    det.save(tmp_path / "det")
    ref = dataclasses.replace(monitor_setup.reference, detector_uri=str(tmp_path / "det"))
    uri = str(tmp_path / "store")
    simulate_window(monitor_setup, uri, n=40, condition="night", seed=51)
    with caplog.at_level(logging.INFO, logger="components.monitor.core"):
        v = _run(monitor_setup, uri, reference=ref, explain=False, write=False)
    assert "saved torch detector" in caplog.text
    assert v.check("drift.embedding").status == "alarm"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="components.monitor.core"):
        _run(monitor_setup, uri, reference=ref, explain=False, write=False,
             config={"n_permutations": 200})  # other settings: a detector fitted for them
    assert "saved torch detector" not in caplog.text
