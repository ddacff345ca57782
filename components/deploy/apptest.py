"""Application testing: the held-out test split through a live endpoint, as a client sees it.

The offline evaluation tested the PyTorch model on decoded arrays; this tests what will run in
production: the package, the predictor's decoding and preprocessing, the HTTP stack. It
passes when

* live accuracy matches the offline accuracy within ``accuracy_tolerance``,
* no request fails (``max_error_rate``, zero by default),
* the 95th percentile request latency is within ``p95_slo_ms``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from components.common.storage import read_uri
from components.deploy.client import run_load
from components.ingest.snapshot import read_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppTestConfig:
    """Rules and load shape of the application test.

    Attributes:
        accuracy_tolerance: Largest allowed ``|live accuracy - offline accuracy|``. When only a
            sample of the split is sent, two binomial standard errors are added to it.
        max_error_rate: Largest share of failed requests.
        p95_slo_ms: Largest allowed 95th percentile request latency.
        concurrency: Requests in flight at a time.
        batch_size: Images per request (a camera sends 1).
        max_images: Send at most this many images of the split (0: all of them).
    """

    accuracy_tolerance: float = 0.01
    max_error_rate: float = 0.0
    p95_slo_ms: float = 250.0
    concurrency: int = 4
    batch_size: int = 1
    max_images: int = 0

    def __post_init__(self):
        for name in ("accuracy_tolerance", "max_error_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Invalid {name}: {getattr(self, name)}. Expect 0 to 1.")
        if self.p95_slo_ms <= 0:
            raise ValueError(f"Invalid p95_slo_ms: {self.p95_slo_ms}. Expect > 0.")
        if self.concurrency < 1 or self.batch_size < 1 or self.max_images < 0:
            raise ValueError("concurrency and batch_size must be at least 1, max_images 0 or "
                             "more.")


def load_labelled_split(split_dir: str, max_images: int = 0) -> tuple[list[bytes], list[str]]:
    """Encoded images and labels of a dataset split (``manifest.csv`` rows point at them).

    With ``max_images``, a deterministic sample: rows in content-hash order, which is
    unrelated to class or key.
    """
    rows, _ = read_split(split_dir)
    if rows.empty:
        raise ValueError(f"The split in {split_dir} has no images to test with.")
    if max_images and max_images < len(rows):
        rows = rows.sort_values("sha256").head(max_images)
    return [read_uri(u) for u in rows["uri"]], list(rows["label"])


def application_test(url: str, served_name: str, images: Sequence[bytes],
                     labels: Sequence[str], offline_accuracy: float, population: int,
                     config: AppTestConfig = AppTestConfig()) -> dict:
    """Sends every image to the endpoint and checks the rules; returns the QA report.

    Args:
        url: The endpoint (``http://host:port``).
        served_name: The model name in ``/v1/models/<name>``.
        images, labels: The labelled test images.
        offline_accuracy: Accuracy of the offline evaluation on the whole split.
        population: Images in the whole split (to tell whether ``images`` is a sample).
    """
    if len(images) != len(labels) or not images:
        raise ValueError(f"Expect as many labels as images, and at least one; got "
                         f"{len(images)} images and {len(labels)} labels.")
    bs = config.batch_size
    batches = [images[i:i + bs] for i in range(0, len(images), bs)]
    logger.info("Application test: %d images in %d requests to %s (concurrency %d)",
                len(images), len(batches), url, config.concurrency)
    load = run_load(url, served_name, batches, concurrency=config.concurrency)
    answered = correct = 0
    for b, preds in enumerate(load.predictions):
        if preds is None:
            continue
        truth = labels[b * bs:(b + 1) * bs]
        answered += len(truth)
        correct += sum(p == t for p, t in zip(preds, truth, strict=True))
    live_accuracy = correct / answered if answered else 0.0
    tolerance = config.accuracy_tolerance
    if len(images) < population:
        p = min(max(offline_accuracy, 1e-6), 1 - 1e-6)
        tolerance += 2 * math.sqrt(p * (1 - p) / len(images))
    summary = load.summary()
    reasons = []
    if abs(live_accuracy - offline_accuracy) > tolerance:
        reasons.append(f"live accuracy {live_accuracy:.4f} differs from the offline "
                       f"{offline_accuracy:.4f} by more than {tolerance:.4f}")
    if load.error_rate > config.max_error_rate:
        first = load.errors[0][1] if load.errors else ""
        reasons.append(f"error rate {load.error_rate:.4f} > {config.max_error_rate} "
                       f"({len(load.errors)} failed requests; first: {first})")
    if not load.latencies_ms or summary["p95_ms"] > config.p95_slo_ms:
        reasons.append(f"p95 latency {summary['p95_ms']:.1f} ms > SLO {config.p95_slo_ms} ms")
    report = {
        "passed": not reasons,
        "reasons": reasons,
        "endpoint": url,
        "served_name": served_name,
        "images": len(images),
        "population": population,
        "live_accuracy": live_accuracy,
        "offline_accuracy": offline_accuracy,
        "accuracy_tolerance_applied": tolerance,
        "load": summary,
        # Every request's latency (capped), for the latency distribution in reports.
        "latencies_ms": [round(x, 2) for x in load.latencies_ms[:5000]],
        "errors": load.errors[:20],
        "config": asdict(config),
    }
    logger.info("Application test %s: accuracy live %.4f vs offline %.4f, errors %d, p95 "
                "%.1f ms", "passed" if report["passed"] else "FAILED", live_accuracy,
                offline_accuracy, len(load.errors), summary["p95_ms"])
    return report


def report_markdown(report: dict, model_name: str = "", version: int | None = None) -> str:
    """The QA report for people."""
    s = report["load"]
    head = f"{model_name} version {version}" if model_name else report["served_name"]
    lines = [
        f"# Application test: {head}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**",
        "",
        f"Endpoint `{report['endpoint']}`, {int(report['images'])} of "
        f"{int(report['population'])} test "
        f"images, {s['requests']} requests, concurrency {report['config']['concurrency']}.",
        "",
        "| check | measured | rule |",
        "|---|---|---|",
        f"| accuracy vs offline | {report['live_accuracy']:.4f} vs "
        f"{report['offline_accuracy']:.4f} | within {report['accuracy_tolerance_applied']:.4f} |",
        f"| error rate | {s['error_rate']:.4f} ({s['errors']} failed) | "
        f"≤ {report['config']['max_error_rate']} |",
        f"| p95 latency | {s['p95_ms']:.1f} ms | ≤ {report['config']['p95_slo_ms']} ms |",
        "",
        f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
        f"{s['throughput_img_s']:.0f} images/s over {s['wall_s']:.1f} s.",
    ]
    if report["reasons"]:
        lines += ["", "Why it failed:", ""] + [f"- {r}" for r in report["reasons"]]
    if report["errors"]:
        lines += ["", "First errors:", ""] + [f"- request {i}: {m}" for i, m in report["errors"]]
    return "\n".join(lines) + "\n"
