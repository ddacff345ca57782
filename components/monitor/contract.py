"""The shapes the monitor, govern and continuous-training steps share.

One verdict shape travels from every check to the report, the history, the alert and the
audit record (name, value, threshold, status, evidence), so nothing downstream branches on
which check produced it. One store layout is shared by the predictor's capture, the feedback
path, the monitoring pipeline and governance, so the monitor reads only the store, the
registry and metrics, never the predictor's internals.

Monitoring store layout (any store URI; default ``$MLOPS_HOME/monitoring``)::

    capture/records/model=<model>/date=<YYYY-MM-DD>/<HHMMSS>-<host>-<pid>-<seq>.jsonl
                                one batch of capture records (one JSON object a line)
    capture/images/<sha256[:2]>/<sha256>
                                sampled input images, content-addressed, written once
    capture/labels/model=<model>/<request_id>/<index>/<seq>.json
                                ground truth for one captured instance, create-only;
                                the highest sequence number is the current label
    monitoring/<model>/history/<window_end>-<run_id>.json
                                one monitoring run's verdict, create-only (never torn)
    monitoring/<model>/reports/<run_id>/report.html, summary.md, gallery/…
    monitoring/<model>/telemetry/<unix_ms>-<instance>.json
                                one scrape of a predictor's /metrics, parsed
    governance/<model>/alerts/<seq>.json, audit/<seq>.json, episodes/<key>.json
                                (components/common/governance.py has the whole layout: also
                                deliveries/<seq>/<recipient>/<n>.json, episodes/<key>.launch.json
                                and .closed.json, governed/<verdict run_id>.json)
    capture/exports/<export_id>/manifest.csv, export.json
                                labelled captures copied into the lake for retraining
                                (components/monitor/export.py), published once
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field

import numpy as np

#: Ordered from best to worst; a verdict's status is the worst of its checks' statuses,
#: where ``unknown`` (not measurable in this window) ranks below ``warning``.
STATUSES = ("ok", "unknown", "warning", "alarm")

#: The kinds of check, as the workflow names them.
KINDS = ("traffic", "integrity", "drift", "prediction_drift", "performance", "telemetry")

# Capture record fields (one JSON object per served instance). Optional fields may be absent.
RECORD_FIELDS = {
    "request_id": "str: the request's id, made by the server (answered as V1 request_id, "
                  "V2 parameters.request_id)",
    "client_request_id": "str, optional: the id the client gave (x-request-id or V2 id; "
                         "'' when none), never used to join",
    "index": "int: the instance's position in the request",
    "time": "float: unix seconds when the answer was made",
    "model": "str: the served model's name",
    "model_version": "str: the registry version the predictor serves",
    "revision": "str: 'stable' or 'canary' (the server's --revision / MLOPS_REVISION, or "
                "the role its router proved it chose; never the client's word); '' from a "
                "Knative revision, whose role the InferenceService's status decides",
    "knative_revision": "str, optional: the Knative revision that served it (K_REVISION, set "
                        "by Knative; components.serve.routing.record_role maps it to a role "
                        "with KServeTarget.revision_roles); absent off a cluster",
    "protocol": "str: 'v1' or 'v2'",
    "stats": "dict: width, height, mode, brightness, contrast, sharpness, colourfulness and "
             "the measured context of the input (components.common.images.image_stats)",
    "input_quality": "str, optional: 'ok', or why the input is junk (a key of "
                     "components.common.images.JUNK_REASONS: too_small, blank, noise), from "
                     "the same decode as stats (a tensor's pixels); absent in older records",
    "context": "str, optional: the context the instance is judged in "
               "(components.common.images.request_context: measured, or sent by the camera)",
    "sent_context": "str, optional: the context the camera client sent, when it sent one",
    "embedding": "list[float]: the model's penultimate-layer output for the input",
    "label": "str: the predicted class",
    "probabilities": "dict[str, float]: class -> probability",
    "image_sha256": "str, optional: key of the sampled input under capture/images/",
    "latency_ms": "float, optional: server-side time of the whole request",
}
STAT_FIELDS = ("width", "height", "brightness", "contrast", "sharpness")


def utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class Check:
    """The verdict of one check on one window.

    Attributes:
        name: Stable dotted id, e.g. ``drift.embedding``, ``integrity.parse_errors``,
            ``performance.accuracy``, ``telemetry.p95_latency``.
        kind: One of ``KINDS``.
        value: The measured value (None when it could not be measured).
        threshold: The value at which the status changes to alarm (None when not applicable).
        status: One of ``STATUSES``.
        detail: One sentence a person reads ("p=0.0003 < 0.05: embeddings moved").
        evidence: Where to look (a report or file URI), may be empty.
        extra: Check-specific numbers (p_val, distance, n, ci_low, ci_high, estimated, …).
        context: The operating context (``day``, ``night`` …) whose part of the window the
            check judged against the reference of that context; empty for a check of the
            whole window (traffic, telemetry) or a reference without contexts.
    """

    name: str
    kind: str
    value: float | None
    threshold: float | None
    status: str
    detail: str
    evidence: str = ""
    extra: dict = field(default_factory=dict)
    context: str = ""

    @property
    def key(self) -> str:
        """The check's name with its context, ``drift.embedding[night]``: what tells one
        condition from another (governance's alert fingerprints)."""
        return f"{self.name}[{self.context}]" if self.context else self.name

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Check {self.name!r}: status {self.status!r} is not one of "
                             f"{', '.join(STATUSES)}.")
        if self.kind not in KINDS:
            raise ValueError(f"Check {self.name!r}: kind {self.kind!r} is not one of "
                             f"{', '.join(KINDS)}.")


@dataclass
class Verdict:
    """Everything one monitoring run concluded about one window of one model."""

    model: str
    model_version: str
    window_start: str
    window_end: str
    run_id: str
    n_requests: int
    n_labelled: int
    checks: list[Check]
    created: str = field(default_factory=utcnow)
    report_uri: str = ""

    @property
    def status(self) -> str:
        if not self.checks:
            return "unknown"
        return max((c.status for c in self.checks), key=STATUSES.index)

    def check(self, name: str, context: str | None = None) -> Check | None:
        """The check called ``name`` (a key such as ``drift.embedding[night]`` names its
        context), of ``context`` when given, else the first of that name."""
        if context is None and name.endswith("]") and "[" in name:
            name, context = name[:-1].split("[", 1)
        return next((c for c in self.checks if c.name == name
                     and (context is None or c.context == context)), None)

    def contexts(self) -> list[str]:
        """The contexts this verdict judged, in report order."""
        return list(dict.fromkeys(c.context for c in self.checks if c.context))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        d = {k: v for k, v in d.items() if k != "status"}
        d["checks"] = [Check(**c) for c in d.get("checks", [])]
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Monitoring reference (added by the monitor's analysis half; the data half builds it)
# --------------------------------------------------------------------------------------------

#: What the monitor needs from a model version's reference. The data half
#: (``components.monitor.reference``) provides
#: ``load_reference(registry_uri, model, version, monitoring_uri="") -> Reference``, building
#: one on demand from the version's dataset when the version has none.
#: Most held-out training images a reference holds (``held_out_sample``'s default).
SAMPLE_SIZE = 1000

REFERENCE_FIELDS = {
    "embeddings": "float32 [n, d]: embeddings of the held-out sample (the test split)",
    "stats": "dict[str, list[float]]: STAT_FIELDS -> the sample's values (same order)",
    "modes": "dict[str, int]: input image mode -> count in the sample (e.g. {'RGB': 400})",
    "labels": "list[str]: the sample's true classes (same order)",
    "probabilities": "float32 [n, classes]: the model's probabilities on the sample",
    "prior": "dict[str, float]: class -> share of the training split",
    "contexts": "list[str]: the sample's contexts (same order; images.measure_context)",
}


#: Fewest reference images of a context for the context to have a reference of its own: a
#: context with fewer held-out training images is topped up from production images at
#: registration (``reference.build_reference_files``); the monitor judges a context the
#: reference still has fewer of against the reference as a whole (the model was not trained
#: for it).
MIN_CONTEXT_IMAGES = 40


def prior_mask(labels, prior: dict) -> np.ndarray:
    """Which sample images to keep so that the sample has the training split's class shares.

    A held-out sample's class mix is the luck of its split: 123 test images of a lake with 51%
    dogs held 62% of them, and the MMD test on the embeddings, which separate the classes,
    read that difference as drift in most windows of the camera's usual mix. So each class
    keeps as many of its images (the first, in the sample's content hash order) as the
    largest sample in the prior's shares allows; classes the training split lacks are left
    out. All are kept when a class of the prior has no image in the sample (no subset has
    the prior's shares) or there are no labels.
    """
    labels = [str(v) for v in labels]
    prior = {str(k): float(v) for k, v in (prior or {}).items() if float(v) > 0}
    counts = {c: labels.count(c) for c in prior}
    if not labels or not prior or any(n == 0 for n in counts.values()):
        return np.ones(len(labels), bool)
    total = min(counts[c] / prior[c] for c in prior)
    quota = {c: min(counts[c], int(np.floor(prior[c] * total + 1e-9))) for c in prior}
    keep = np.zeros(len(labels), bool)
    for i, c in enumerate(labels):
        if quota.get(c, 0) > 0:
            quota[c] -= 1
            keep[i] = True
    return keep


@dataclass
class Reference:
    """The training-side view of one model version that a monitoring window is judged against.

    Attributes:
        model, model_version: Which version (registry integer version as a string).
        classes: The model's classes, in output order.
        prior: Class shares of the training split.
        embeddings: ``[n, d]`` array (numpy) of the held-out sample's embeddings.
        stats: STAT_FIELDS -> list of the sample's values.
        modes: image mode -> count in the sample.
        labels: The sample's true classes, or empty.
        probabilities: ``[n, classes]`` array of the model's probabilities, or None.
        dataset_version: The dataset the sample came from (lineage).
        detector_uri: Where a fitted drift detector was saved for this reference, or "".
        uri: Where the reference is stored.
        population: What the sample is, in words (e.g. the dataset's test split), or "".
        contexts: Each sample image's context (``images.measure_context``), or empty for a
            reference built before contexts were recorded.
        context: The context this reference is the part of (:meth:`part`), or "".
    """

    model: str
    model_version: str
    classes: list
    prior: dict
    embeddings: object
    stats: dict
    modes: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)
    probabilities: object = None
    dataset_version: str = ""
    detector_uri: str = ""
    uri: str = ""
    population: str = ""
    contexts: list = field(default_factory=list)
    context: str = ""

    def context_counts(self) -> dict[str, int]:
        """Sample images per context."""
        out: dict[str, int] = {}
        for c in self.contexts:
            out[c] = out.get(c, 0) + 1
        return out

    def at_prior(self) -> Reference:
        """The sample in the training split's class shares (:func:`prior_mask`), for the
        drift tests; the reference itself when nothing is left out. Its ``detector_uri`` is
        kept: the monitor uses a saved detector only if it was fitted on these very rows
        (registration fits it on them)."""
        if not self.labels or len(self.labels) != len(self.embeddings):
            return self
        keep = prior_mask(self.labels, self.prior)
        if keep.all() or keep.sum() < 2:
            return self
        sub = self._subset(keep, self.context)
        sub.detector_uri = self.detector_uri
        return sub

    def _subset(self, keep: np.ndarray, context: str) -> Reference:
        idx = np.flatnonzero(keep)

        def rows(values):
            return None if values is None else np.asarray(values)[keep]

        return Reference(
            model=self.model, model_version=self.model_version, classes=self.classes,
            prior=self.prior, embeddings=rows(self.embeddings),
            stats={k: [v[i] for i in idx] for k, v in self.stats.items()}, modes=self.modes,
            labels=[self.labels[i] for i in idx] if self.labels else [],
            probabilities=rows(self.probabilities), dataset_version=self.dataset_version,
            detector_uri="", uri=self.uri, population=self.population,
            contexts=[self.contexts[i] for i in idx] if self.contexts else [],
            context=context)

    def part(self, context: str) -> Reference:
        """The reference of one context: the sample images of that context (their
        embeddings, statistics, labels, probabilities); the class prior and modes of the
        whole. Its drift detector is fitted when it is needed (the saved one is the
        whole's)."""
        return self._subset(np.array([c == context for c in self.contexts], bool), context)
