"""The closed loop on this machine: serve, capture, monitor, alert, retrain, release, monitor.

The pet park's story, with every part real: production (a KServe model server started by the
local deployment target, capturing every request into the monitoring store) answers day
images from the camera over HTTP; then the camera switches to night mode (the generator's
``--condition night``). A reviewer labels a sample of each window's frames through the
feedback path. After every ``check_every`` requests the monitor judges the last ``window``
requests against the production version's reference; from the switch on, governance applies
the policy to each verdict (the day windows are the baseline, judged and reported): the
product owner's webhook (a receiver on 127.0.0.1 that this module starts, :mod:`demo.webhook`)
gets the alert, and the retraining trigger runs the continuous-training pipeline under kfp.local.
The retrained model is released by canary only if it beats production on the captured night
images; then the next windows are judged against the new version, and when the camera turns
back to day mode a day window too: a version retrained on night images has a reference of both
contexts, so the morning is normal for it.

Library code: it logs, and reports progress through ``on_event`` (the CLI prints).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.common.registry import ModelRegistry
from components.common.service import wait_until
from components.common.storage import open_store
from components.datagen.core import LakeSpec, generate, render
from components.deploy.client import v1_body
from components.deploy.targets.local import LocalTarget
from components.evaluate.core import GateConfig, evaluate
from components.govern.core import govern
from components.govern.policy import load_policy
from components.ingest.core import ingest
from components.ingest.snapshot import read_split, write_split
from components.monitor.core import run_monitoring
from components.monitor.feedback import LabelRequest, LabelStore
from components.monitor.window import read_window
from components.package.core import build_package
from components.register.core import register_package
from components.train import core as train
from demo.camera import Camera
from demo.webhook import WebhookReceiver, alert_text
from pipelines.launchers import LocalLauncher

logger = logging.getLogger(__name__)

MODEL = "pet-classifier"
#: Check kinds whose alarm means "the camera's data or the model's quality changed" (what
#: alerts the product owner and retrains); a day window alarming on one is a false alarm.
ALERTING_KINDS = {"drift", "prediction_drift", "performance"}


@dataclass
class LoopConfig:
    """What the loop does, and how big.

    Attributes:
        home: The local stores' root (``$MLOPS_HOME``): lake, datasets, registry,
            deployments, monitoring, work, pipeline runs.
        model_name: Registered model name (its ``production`` version is the start).
        size: Side of the camera images (the production model's input size is used for
            serving; this only sets the rendered frames).
        day_requests: Day images served before the switch.
        max_night_requests: Night images served at most while waiting for the alarm.
        after_requests: Night images served to the retrained model, judged every
            ``check_every`` requests; then ``window`` day frames (the camera back in day
            mode) are judged as the last window.
        window: Requests in one monitoring window (the last ``window`` requests).
        check_every: Requests between monitoring runs.
        label_share: Share of each window's requests a reviewer labels.
        retrain_labels: Labelled night frames to wait for, once retraining is triggered,
            before the run starts (the camera keeps serving and the reviewer labelling).
        seed: Seed of the camera's images and of which frames are labelled.
        image_rate: Share of inputs whose image the predictor keeps (exported for retraining).
        ct_arguments: Overrides of the continuous-training pipeline's arguments.
        backend: Drift backend (None: the monitor's default).
        policy_path: Governance policy file (None: the shipped default).
        explain: Saliency gallery in the monitoring reports (slower).
        monitor: Monitoring settings (``components.monitor.checks.MonitorConfig`` fields,
            such as ``p_val``); empty: the monitor's defaults.
    """

    home: Path
    model_name: str = MODEL
    size: int = 64
    day_requests: int = 200
    max_night_requests: int = 600
    after_requests: int = 200
    window: int = 100
    check_every: int = 50
    label_share: float = 0.5
    retrain_labels: int = 250
    seed: int = 7
    image_rate: float = 1.0
    ct_arguments: dict = field(default_factory=dict)
    backend: str | None = None
    policy_path: str | None = None
    explain: bool = False
    monitor: dict = field(default_factory=dict)

    def __post_init__(self):
        self.home = Path(self.home)
        if self.window < 10 or self.check_every < 1 or self.check_every > self.window:
            raise ValueError(f"Invalid window {self.window} / check_every {self.check_every}: "
                             "expect window >= 10 and 1 <= check_every <= window.")
        if not 0.0 <= self.label_share <= 1.0:
            raise ValueError(f"Invalid label_share: {self.label_share}. Expect 0 to 1.")

    @property
    def stores(self) -> dict:
        h = self.home
        return {"lake": str(h / "lake" / "petpark"), "datasets": str(h / "datasets"),
                "registry": str(h / "registry"), "deployments": str(h / "deployments"),
                "monitoring": str(h / "monitoring"), "work": str(h / "work"),
                "runs": str(h / "pipeline-runs"), "retrain_runs": str(h / "retrain-runs")}


def _class_name(label: str, classes: list[str]) -> str:
    return next((c for c in classes if c in (label, label + "s")), label)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class Served:
    request_id: str
    time: float
    condition: str
    truth: str
    predicted: str
    version: int
    labelled: bool = False
    sent: float = 0.0  # when the request left (``time``: when its answer came back)
    view: str = "usual"  # where the camera looked (``components.datagen.core.VIEWS``)


class Loop:
    """One run of the closed loop; :meth:`run` returns the timeline and the measurements."""

    def __init__(self, config: LoopConfig, on_event=None):
        self.cfg = config
        self.on_event = on_event or (lambda e: None)
        self.s = config.stores
        self.events: list[dict] = []
        self.served: list[Served] = []
        self.verdicts: list[dict] = []
        self.started = time.monotonic()
        self.rng = __import__("random").Random(config.seed)
        self.camera = Camera(config.size, config.seed + 1000)
        self.condition = "day"
        self.session = None

    # -- helpers ---------------------------------------------------------------------------

    def event(self, kind: str, text: str, **data) -> dict:
        e = {"t": round(time.monotonic() - self.started, 1), "requests": len(self.served),
             "kind": kind, "text": text, **data}
        self.events.append(e)
        logger.info("%s: %s", kind, text)
        self.on_event(e)
        return e

    def _registry(self):
        return ModelRegistry(self.s["registry"])

    def _target(self):
        return LocalTarget(self.s["registry"], self.cfg.model_name, self.s["deployments"])

    def _capture_env(self) -> None:
        """Production captures every request, with its image, in small batches, so that a
        window is in the store a second after its last answer. Servers started from here on
        (by this process or the pipelines it runs) inherit it."""
        os.environ.update({"MLOPS_CAPTURE_URI": self.s["monitoring"],
                           "MLOPS_CAPTURE_SAMPLE_RATE": "1.0",
                           "MLOPS_CAPTURE_IMAGE_RATE": str(self.cfg.image_rate),
                           "MLOPS_CAPTURE_BATCH_RECORDS": "50",
                           "MLOPS_CAPTURE_BATCH_SECONDS": "0.5"})

    def ensure_production(self):
        """Production running the registry's production version, with capture on."""
        registry = self._registry()
        try:
            version = registry.resolve(self.cfg.model_name, "@production")
        except Exception as exc:  # RegistryError; said in words below
            raise FileNotFoundError(
                f"No production version of {self.cfg.model_name!r} in {self.s['registry']}: "
                "run `mlops demo` first (it trains and releases one).") from exc
        target = self._target()
        # Restart it so that it has the capture settings (the first demo stopped it anyway).
        dep = target.deploy("production", version)
        return dep

    def serve(self, condition: str, n: int, view: str = "usual") -> list[Served]:
        """Sends ``n`` camera frames of ``condition`` seen from ``view``, one request each,
        to production."""
        import requests

        target = self._target()
        dep = target.status("production")
        classes = self.classes
        out = []
        self.session = self.session or requests.Session()
        for truth, data in self.camera.frames(condition, n, view):
            frame_id = f"cam-{uuid.UUID(int=self.rng.getrandbits(128)).hex}"
            sent = time.time()
            r = self.session.post(f"{dep.url}/v1/models/{dep.name}:predict",
                                  json=v1_body([data]), headers={"x-request-id": frame_id},
                                  timeout=30)
            r.raise_for_status()
            pred = r.json()["predictions"][0]["label"]
            rid = r.json()["request_id"]  # the server's id, which labels are joined by
            s = Served(rid, time.time(), condition, _class_name(truth, classes), pred,
                       dep.stable.version, sent=sent, view=view)
            out.append(s)
            self.served.append(s)
        return out

    def label(self, served: list[Served]) -> int:
        """The reviewer labels a share of the frames (late ground truth)."""
        chosen = [s for s in served if self.rng.random() < self.cfg.label_share]
        for s in chosen:
            s.labelled = True
        if chosen:
            LabelStore(self.s["monitoring"], self.cfg.model_name, self.classes).add_many(
                [LabelRequest(s.request_id, s.truth, 0, by="camera-reviewer") for s in chosen],
                source="review")
        return len(chosen)

    def _wait_captured(self, start: float, end: float, expected: int, timeout: float = 20.0):
        n = 0

        def captured() -> bool:
            nonlocal n
            n = len(read_window(self.s["monitoring"], self.cfg.model_name, start, end,
                                with_labels=False))
            return n >= expected

        if not wait_until(captured, timeout, 0.25):
            logger.warning("Only %d of %d requests captured in the window", n, expected)
        return n

    def monitor(self, last: int, on_verdict=None, govern: bool = True,
                retrain: bool = True) -> tuple:
        """Judges the last ``last`` requests and governs the verdict (``retrain=False``: with
        no retraining launcher, so a trigger is recorded but starts no run);
        ``on_verdict(verdict, entry)`` is called in between. Returns (verdict, actions,
        entry)."""
        window = self.served[-last:]
        # Each request is captured after it is sent and before its answer is back, and the
        # camera sends the next only after that answer: [first sent, last answered) holds
        # exactly these requests.
        start, end = window[0].sent, window[-1].time
        self._wait_captured(start, end, len(window))
        dep = self._target().status("production")
        result = run_monitoring(self.cfg.model_name, self.s["registry"], self.s["monitoring"],
                                start=start, end=end, backend=self.cfg.backend,
                                explain=self.cfg.explain, full=True,
                                config=self.cfg.monitor or None,
                                metrics_url=dep.url if dep else "")
        verdict = result.verdict
        verdict_uri = open_store(self.s["monitoring"]).uri_of(result.history_key) \
            if result.history_key else ""
        entry = {"requests": len(self.served), "status": verdict.status,
                 "version": verdict.model_version, "n": verdict.n_requests,
                 "labelled": verdict.n_labelled,
                 "checks": {c.name: {"status": c.status, "value": c.value}
                            for c in verdict.checks},
                 "report": verdict.report_uri,
                 "night_share": sum(s.condition == "night" for s in window) / len(window),
                 "served_accuracy": sum(s.truth == s.predicted for s in window) / len(window)}
        self.verdicts.append(entry)
        if on_verdict is not None:
            on_verdict(verdict, entry)
        actions = self.govern(verdict, verdict_uri, retrain) if govern else []
        entry["actions"] = [a["action"] for a in actions]
        return verdict, actions, entry

    def govern(self, verdict, verdict_uri: str, retrain: bool = True) -> list[dict]:
        loop = self

        class AfterLabels(LocalLauncher):
            """Starts the run once enough night frames are labelled: meanwhile the camera
            keeps serving and the reviewer keeps labelling."""

            def launch(self, trigger: dict) -> dict:
                loop.collect_labels(trigger)
                return super().launch(trigger)

        launcher = (AfterLabels(self.ct_arguments(), self.s["retrain_runs"], wait=True)
                    if retrain else None)
        return govern(verdict, load_policy(self.cfg.policy_path), store_uri=self.s["monitoring"],
                      registry_uri=self.s["registry"], target=self._target(),
                      launcher=launcher, verdict_uri=verdict_uri)

    def labelled(self, condition: str) -> int:
        return sum(1 for s in self.served if s.condition == condition and s.labelled)

    def collect_labels(self, trigger: dict) -> None:
        """Waits (serving the camera as it is now) until enough of its frames are labelled."""
        need, now = self.cfg.retrain_labels, self.condition
        if self.labelled(now) < need:
            self.event("labels", f"retraining triggered (episode {trigger.get('episode')}); "
                                 f"waiting for {need} labelled {now} frames "
                                 f"({self.labelled(now)} so far)")
        while self.labelled(now) < need:
            self.label(self.serve(now, self.cfg.check_every))
        self.event("labels", f"{self.labelled(now)} {now} frames labelled: retraining starts",
                   labelled=self.labelled(now))

    def ct_arguments(self) -> dict:
        size = self.input_size
        args = {"data_uri": self.s["lake"], "dataset_root": self.s["datasets"],
                "registry_uri": self.s["registry"], "work_root": self.s["work"],
                "monitoring_uri": self.s["monitoring"], "model_name": self.cfg.model_name,
                "image_size": size, "deploy_target": "local",
                "serving_root": self.s["deployments"], "trial_epochs": 2, "epochs": 6,
                "min_recent_images": 10, "max_reference_drop": 0.05,
                "champion_tolerance": 0.01, "p95_slo_ms": 1000.0,
                "canary_requests_per_step": 50}
        args.update(self.cfg.ct_arguments)
        return args

    def start(self) -> int:
        """Capture on, production (re)started with it; returns the production version."""
        self._capture_env()
        dep = self.ensure_production()
        meta = json.loads(self._registry().read_file(self.cfg.model_name, dep.stable.version,
                                                     "metadata.json"))
        self.classes, self.input_size = meta["classes"], int(meta["image_size"])
        return dep.stable.version

    def day_only(self, n: int) -> dict:
        """Serves ``n`` day frames, judging a window every ``check_every`` requests without
        acting on the verdicts: the false alarms of an unchanged camera."""
        self.start()
        windows, alarms, any_alarms, by_check = 0, 0, 0, {}
        first = len(self.served)
        while len(self.served) - first < n:
            self.label(self.serve("day", self.cfg.check_every))
            if len(self.served) - first >= self.cfg.window:
                verdict, _, _ = self.monitor(self.cfg.window, govern=False)
                windows += 1
                alarmed = [c for c in verdict.checks if c.status == "alarm"]
                for c in alarmed:
                    by_check[c.name] = by_check.get(c.name, 0) + 1
                alarms += any(c.kind in ALERTING_KINDS for c in alarmed)
                any_alarms += bool(alarmed)
        return {"requests": n, "windows": windows, "alarms": alarms,
                "any_check_alarms": any_alarms, "alarms_by_check": by_check}

    # -- the story -------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        registry = self._registry()
        before_version = self.start()
        dep = self._target().status("production")
        self.event("start", f"production serves {cfg.model_name} version {before_version} at "
                            f"{dep.url}, capturing every request into {self.s['monitoring']}",
                   version=before_version)
        # Day: the camera as it was trained for.
        false_alarms = any_alarms = 0
        day_checks = 0
        while len(self.served) < cfg.day_requests:
            batch = self.serve("day", cfg.check_every)
            self.label(batch)
            if len(self.served) >= cfg.window:
                # The day is the baseline: judged and reported, not governed, so that the
                # retraining episode of this version starts with the change (one per version).
                verdict, actions, entry = self.monitor(cfg.window, lambda v, e: self.event(
                    "monitor", self._summary(e), verdict=e), govern=False)
                day_checks += 1
                kinds = {c.kind for c in verdict.checks if c.status == "alarm"}
                false_alarms += bool(kinds & ALERTING_KINDS)
                any_alarms += bool(kinds)
        # Night: the camera switches to IR mode.
        switch_at = len(self.served)
        self.condition = "night"
        self.event("switch", "the camera switches to night mode (IR greyscale, dark)")
        trigger = None
        labelled = 0
        detected = {}

        def judged(verdict, entry):
            self.event("monitor", self._summary(entry) + f" ({labelled} new labels)",
                       verdict=entry)
            alarms = [c for c in verdict.checks
                      if c.status == "alarm" and c.kind in ALERTING_KINDS]
            if alarms and not detected:
                detected.update({"requests_after_switch": len(self.served) - switch_at,
                                 "checks": [c.name for c in alarms],
                                 "verdict": verdict.run_id})
                self.event("alarm", f"{len(self.served) - switch_at} requests after the "
                                    f"switch: {', '.join(c.name for c in alarms)}",
                           detection=dict(detected))

        while len(self.served) - switch_at < cfg.max_night_requests:
            batch = self.serve("night", cfg.check_every)
            labelled = self.label(batch)
            verdict, actions, entry = self.monitor(cfg.window, judged)
            for a in actions:
                if a["action"] in ("retrain", "retrain_failed", "rollback", "hold"):
                    self.event(a["action"], a.get("detail") or a.get("rule", ""), action=a)
                if a["action"] == "retrain":
                    trigger = a
            if trigger is not None:
                break
        detected = detected or None
        if detected is None:
            self.event("no_alarm", f"no alarm in {cfg.max_night_requests} night requests")
        release = self._release_after(before_version, trigger)
        after = None
        now_version = registry.resolve(cfg.model_name, "@production")
        if trigger is not None:
            # The next windows: night frames again, judged against the production version
            # now, every check_every requests as before (the last one is reported). Governed
            # as usual, except that the demo retrains once: a trigger is recorded (the audit
            # log shows it) but starts no second run.
            self.served_after_start = len(self.served)
            last = min(cfg.window, cfg.after_requests)
            while len(self.served) - self.served_after_start < cfg.after_requests:
                batch = self.serve("night", cfg.check_every)
                self.label(batch)
                if len(self.served) - self.served_after_start < last:
                    continue
                verdict, actions, entry = self.monitor(last, lambda v, e: self.event(
                    "monitor", "after the release: " + self._summary(e), verdict=e),
                    retrain=False)
                after = entry
                for a in actions:
                    if a["action"] == "retrain":
                        self.event("retrain", "a further trigger recorded, not started (the "
                                              f"demo retrains once): {a.get('detail', '')}",
                                   action=a)
                    elif a["action"] in ("rollback", "hold", "resolved"):
                        self.event(a["action"], a.get("detail") or a.get("rule", ""),
                                   action=a)
            # Morning: the camera turns back to colour. The version now in production is
            # judged on a window of day frames; its reference covers both contexts, so a
            # context switch alone raises no alarm and starts nothing.
            day_after = self._back_to_day()
        else:
            day_after = None
        night_before = [s for s in self.served[switch_at:] if s.version == before_version
                        and s.condition == "night"]
        night_after = [s for s in self.served if s.condition == "night"
                       and s.version != before_version]
        day = [s for s in self.served[:switch_at]]
        result = {
            "config": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(cfg).items()},
            "version_before": before_version, "version_after": now_version,
            "detection": detected, "switch_at": switch_at,
            "false_alarms": {"windows": day_checks, "alarms": false_alarms,
                             "any_check_alarms": any_alarms},
            "accuracy": {"day_before": _acc(day), "night_before": _acc(night_before),
                         "night_after": _acc(night_after)},
            "release": release, "after": after, "day_after": day_after,
            "verdicts": self.verdicts,
            "alerts_received": [], "wall_s": round(time.monotonic() - self.started, 1),
        }
        result["report"] = self._compliance_report()
        return result

    def _back_to_day(self) -> dict:
        """The camera switches back to day mode: ``window`` day frames, judged as one window
        against the production version and governed (a trigger would be recorded, not
        started: the demo retrains once). Returns the window's entry."""
        cfg = self.cfg
        self.condition = "day"
        self.event("switch", "the camera switches back to day mode (colour)")
        first = len(self.served)
        while len(self.served) - first < cfg.window:
            left = cfg.window - (len(self.served) - first)
            self.label(self.serve("day", min(cfg.check_every, left)))
        verdict, actions, entry = self.monitor(cfg.window, lambda v, e: self.event(
            "monitor", "back to day: " + self._summary(e), verdict=e), retrain=False)
        alarms = [c.key for c in verdict.checks
                  if c.status == "alarm" and c.kind in ALERTING_KINDS]
        entry["alarms"] = alarms
        for a in actions:
            if a["action"] == "retrain":
                self.event("retrain", "a trigger recorded, not started (the demo retrains "
                                      f"once): {a.get('detail', '')}", action=a)
            elif a["action"] in ("rollback", "hold", "alert"):
                self.event(a["action"], a.get("detail") or a.get("rule", ""), action=a)
        if alarms:
            self.event("alarm", f"back in day mode: {', '.join(alarms)}", alarms=alarms)
        else:
            self.event("normal", f"the day window is normal for version {entry['version']}: "
                                 "no drift, class-share or performance alarm in any context")
        return entry

    def _release_after(self, before_version: int, trigger: dict | None) -> dict | None:
        if trigger is None:
            return None
        registry = self._registry()
        runs = sorted(Path(self.s["retrain_runs"]).glob("*/result.json"),
                      key=lambda p: p.stat().st_mtime)
        result = json.loads(runs[-1].read_text()) if runs else {}
        releases = [r for r in registry.releases(self.cfg.model_name)
                    if r.get("previous_version") == before_version]
        rec = releases[-1] if releases else None
        out = {"run": trigger.get("run_id"), "state": result.get("state"),
               "error": result.get("error"), "export_id": (result.get("outputs") or {}).get(
                   "export_id"), "decision": rec["decision"] if rec else None,
               "version": rec["version"] if rec else None,
               "steps": [{"percent": s["percent"], "passed": s["passed"],
                          "canary_accuracy": s["canary"].get("accuracy"),
                          "stable_accuracy": (s.get("stable") or {}).get("accuracy")}
                         for s in (rec or {}).get("steps", [])],
               "log": str(Path(self.s["retrain_runs"]) / trigger.get("run_id", "") / "run.log")}
        evaluation = self._evaluation(result)
        if evaluation:
            out["gate"] = {"blessed": evaluation["gate"]["blessed"],
                           "reasons": evaluation["gate"]["reasons"],
                           "recent": evaluation["gate"].get("recent")}
        if rec:
            self.event("release", f"version {rec['version']} {rec['decision']} over version "
                                  f"{before_version} by canary", release=out)
        else:
            why = "; ".join((out.get("gate") or {}).get("reasons", [])) or out.get("error") \
                or "see the run log"
            self.event("no_release", f"the retrained model was not released: {why}",
                       release=out)
        return out

    @staticmethod
    def _evaluation(result: dict) -> dict | None:
        uri = (result.get("outputs") or {}).get("evaluation", "")
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        try:
            return json.loads(Path(path).read_text()) if path else None
        except (OSError, ValueError):
            return None

    def _compliance_report(self) -> dict:
        try:
            from components.govern.report import write_report  # deferred: optional (below)
        except ImportError:
            self.event("skipped", "compliance report: components.govern.report is not "
                                  "installed")
            return {}
        out = Path(self.cfg.home) / "reports"
        paths = write_report(self.cfg.model_name, "@production", self.s["registry"],
                             self.s["monitoring"], str(out))
        return {k: str(v) for k, v in paths.items()}

    @staticmethod
    def _summary(entry: dict) -> str:
        def st(prefix):
            found = {k: v for k, v in entry["checks"].items() if k.startswith(prefix)}
            worst = max((v["status"] for v in found.values()),
                        key=("ok", "unknown", "warning", "alarm").index, default="-")
            return worst
        acc = entry["checks"].get("performance.accuracy", {})
        acc_text = (f"{acc['value']:.3f}" if isinstance(acc.get("value"), float) else "-")
        return (f"window of {entry['n']} (v{entry['version']}, {entry['night_share']:.0%} night,"
                f" {entry['labelled']} labelled): {entry['status']}; drift {st('drift.')}, "
                f"performance {st('performance.')} (accuracy {acc_text})")


def _acc(served: list[Served]) -> float | None:
    return round(sum(s.truth == s.predicted for s in served) / len(served), 4) if served \
        else None


def run_loop(config: LoopConfig, on_event=None, on_alert=None) -> dict:
    """Runs the closed loop with a webhook receiver for the product owner and the QA expert.

    Returns:
        The timeline (``events``) and measurements: detection delay, false alarms on the day
        stream, served accuracy on night frames before and after, the release, the report.
    """
    loop = Loop(config, on_event)
    with people_webhooks(on_alert) as receiver:
        result = loop.run()
    result["alerts_received"] = [{"path": m["path"], "text": alert_text(m["body"])}
                                 for m in receiver.messages]
    result["events"] = loop.events
    return result


@contextmanager
def people_webhooks(on_alert=None):
    """A webhook receiver for the product owner (``/product-owner``) and the QA expert
    (``/qa-expert``), with this process's environment pointed at it while the block runs.

    The loop also points the environment at its capture store (the servers and pipeline steps
    it starts inherit it); on leaving the block the caller's environment is given back as it
    was, so that a notebook or a test process goes on with its own stores.

    Yields:
        The running :class:`demo.webhook.WebhookReceiver` (its ``messages`` stay readable
        after the block).
    """
    previous = dict(os.environ)
    with WebhookReceiver(on_alert) as receiver:
        os.environ["MLOPS_ALERT_PRODUCT_OWNER_URL"] = receiver.url + "/product-owner"
        os.environ["MLOPS_ALERT_QA_URL"] = receiver.url + "/qa-expert"
        try:
            yield receiver
        finally:
            for k in set(os.environ) - set(previous):
                del os.environ[k]
            os.environ.update(previous)


def bootstrap_production(home: str | os.PathLike, n: int = 1000, size: int = 64,
                         epochs: int = 8, seed: int = 31, model_name: str = MODEL,
                         reference_sample: int = 1000,
                         conditions: tuple[str, ...] = ("day",)) -> dict:
    """A sample lake, its dataset version, and a production model trained on it, with the
    core functions the pipeline's steps call (faster than the training pipeline, for the
    tests, the benchmarks and the notebook). ``mlops demo`` does this with the pipeline.

    Args:
        n: Images of each condition.
        conditions: The camera's conditions the lake has (``components.datagen.core``
            ``CONDITIONS``): day only by default (the closed loop's story: night is new to
            production); ``("day", "night")`` gives a production version that knows both of
            the park's contexts, with a reference of both (a week of the park). The first
            condition's images are at the lake's usual keys, each other's under
            ``<class>s/<condition>/``.
    """
    home = Path(home)
    stores = LoopConfig(home=home).stores
    lake = open_store(stores["lake"])
    for i, condition in enumerate(conditions):
        spec = LakeSpec(n=n, size=size, seed=seed + i, condition=condition)
        if i == 0:
            generate(spec, lake)
        else:
            for j in range(n):  # the label stays the key's first folder
                label, data = render(spec, j)
                lake.put(f"{label}s/{condition}/{label}_{j:06d}.jpg", data)
    result = ingest(lake.uri, stores["datasets"])
    work = home / "bootstrap"
    for split in ("train", "test"):
        write_split(result, split, str(work / split))
    rows, meta = read_split(str(work / "train"))
    data = train.prepare(rows, meta["dataset_version"], size)
    train.train(data, train.HParams(epochs=epochs, image_size=size, lr=3e-3, batch_size=32,
                                    seed=seed), work / "model")
    evaluation = evaluate(str(work / "model"), str(work / "test"), GateConfig(0.0, 0.0, 1.0))
    (work / "evaluation.json").write_text(json.dumps(
        {k: v for k, v in evaluation.items() if k != "report_html"}))
    model, model_meta = train.load_model(work / "model")
    test_rows, _ = read_split(str(work / "test"))
    build_package(model, model_meta, evaluation, train.load_images(test_rows.head(20), size),
                  model_name, work / "package")
    mv = register_package(str(work / "package"), str(work / "model"),
                          str(work / "evaluation.json"), str(work / "train"),
                          stores["registry"], model_name, alias="",
                          reference_sample=reference_sample)
    ModelRegistry(stores["registry"]).set_alias(model_name, "production", mv.version,
                                                reason="bootstrap")
    return {"version": mv.version, "dataset_version": result.version,
            "test_accuracy": evaluation["metrics"]["accuracy"], "lake": lake.uri}
