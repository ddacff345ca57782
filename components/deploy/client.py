"""Talking to a served classifier over HTTP: single requests and measured load.

Used by application testing, canary analysis, the demo and the serving benchmark, so that
every figure they report comes from the same client doing the same thing an application does:
a V1 ``:predict`` request with base64-encoded JPEG bytes.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import requests

from components.common.errors import MlopsError, UserError
from components.common.service import wait_until

logger = logging.getLogger(__name__)


class EndpointError(MlopsError, RuntimeError):
    """An endpoint that cannot be reached or never became ready."""


class RequestRefused(UserError, EndpointError):
    """The server refused a request as the client's mistake (HTTP 4xx): ``reason`` is its
    own message (an image it cannot read, an undeclared camera context)."""

    def __init__(self, url: str, status: int, reason: str):
        super().__init__(f"{url} answered {status}: {reason}")
        self.status = status
        self.reason = reason


def v1_body(images: Sequence[bytes]) -> dict:
    """The V1 request body for encoded images."""
    return {"instances": [{"image_bytes": {"b64": base64.b64encode(i).decode("ascii")}}
                          for i in images]}


def predict(url: str, model: str, images: Sequence[bytes], timeout: float = 30.0,
            session: requests.Session | None = None) -> list[dict]:
    """Classifies encoded images; returns ``[{"label": …, "probabilities": {…}}, …]``.

    Raises:
        EndpointError: On a non-200 answer, with the server's message.
    """
    return predict_answer(url, model, images, timeout, session)["predictions"]


def predict_answer(url: str, model: str, images: Sequence[bytes], timeout: float = 30.0,
                   session: requests.Session | None = None,
                   headers: Mapping[str, str] | None = None) -> dict:
    """The server's whole V1 answer: ``predictions``, ``model_version`` and ``request_id``
    (the id the capture, labels and ``mlops trace`` know the request by).

    Args:
        headers: Extra request headers, e.g. ``x-camera-context``.

    Raises:
        RequestRefused: A 4xx answer (the request's mistake), with the server's message.
        EndpointError: Any other non-200 answer, with the server's message.
    """
    http = session or requests
    r = http.post(f"{url.rstrip('/')}/v1/models/{model}:predict", json=v1_body(images),
                  timeout=timeout, headers=dict(headers or {}))
    if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
        try:
            reason = str(r.json().get("error") or r.text)
        except ValueError:
            reason = r.text
        raise RequestRefused(url, r.status_code, reason[:300])
    if r.status_code != 200:
        raise EndpointError(f"{url} answered {r.status_code}: {r.text[:300]}")
    return r.json()


def wait_ready(url: str, model: str, timeout: float = 60.0,
               alive: Callable[[], bool] | None = None, poll_s: float = 0.1) -> float:
    """Waits until ``GET /v1/models/<model>`` says ready; returns the seconds waited.

    Args:
        alive: Optional check that the server process still runs, to fail fast on a crash.
        poll_s: Pause between checks.
    """
    started = time.monotonic()

    def ready() -> bool:
        if alive is not None and not alive():
            raise EndpointError(f"The model server for {url} exited before it became ready.")
        try:
            r = requests.get(f"{url.rstrip('/')}/v1/models/{model}", timeout=2)
            return r.status_code == 200 and bool(r.json().get("ready"))
        except requests.RequestException:
            return False

    if not wait_until(ready, timeout, poll_s):
        raise EndpointError(f"{url} did not report model {model!r} ready within {timeout:.0f} s.")
    return time.monotonic() - started


@dataclass
class LoadResult:
    """What a run of requests measured.

    Attributes:
        latencies_ms: One per request (successful or not), in completion order.
        errors: ``(request index, message)`` for every request that failed.
        predictions: Per request, the predicted labels (None where it failed).
        model_versions: Per request, the ``model_version`` the server reported.
        wall_s: Wall time from the first request sent to the last answer.
        images: Images sent.
    """

    latencies_ms: list[float] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    predictions: list[list[str] | None] = field(default_factory=list)
    model_versions: list[str | None] = field(default_factory=list)
    wall_s: float = 0.0
    images: int = 0

    @property
    def requests(self) -> int:
        return len(self.predictions)

    @property
    def error_rate(self) -> float:
        return len(self.errors) / self.requests if self.requests else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        """Images per second."""
        return self.images / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict:
        return {"requests": self.requests, "images": self.images, "errors": len(self.errors),
                "error_rate": self.error_rate, "p50_ms": self.percentile_ms(50),
                "p95_ms": self.percentile_ms(95), "p99_ms": self.percentile_ms(99),
                "throughput_img_s": self.throughput, "wall_s": self.wall_s}


def run_load(url: str, model: str, batches: Sequence[Sequence[bytes]], concurrency: int = 1,
             timeout: float = 30.0, headers: Mapping[str, str] | None = None) -> LoadResult:
    """Sends each batch as one request, ``concurrency`` requests in flight at a time (with
    ``headers``, if given).

    Failures are recorded, never raised: a load run measures an endpoint, it does not stop at
    its first error.
    """
    if concurrency < 1:
        raise ValueError(f"Invalid concurrency: {concurrency}. Expect 1 or more.")
    n = len(batches)
    result = LoadResult(latencies_ms=[0.0] * n, predictions=[None] * n,
                        model_versions=[None] * n, images=sum(len(b) for b in batches))
    local = threading.local()
    lock = threading.Lock()

    def one(i: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        t0 = time.perf_counter()
        try:
            r = local.session.post(f"{url.rstrip('/')}/v1/models/{model}:predict",
                                   json=v1_body(batches[i]), timeout=timeout,
                                   headers=dict(headers or {}))
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code == 200:
                body = r.json()
                result.predictions[i] = [p["label"] for p in body["predictions"]]
                result.model_versions[i] = body.get("model_version")
            else:
                with lock:
                    result.errors.append((i, f"HTTP {r.status_code}: {r.text[:200]}"))
        except (requests.RequestException, ValueError, KeyError) as exc:
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                result.errors.append((i, f"{type(exc).__name__}: {exc}"))
        result.latencies_ms[i] = elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(n)))
    result.wall_s = time.perf_counter() - started
    result.errors.sort()
    return result
