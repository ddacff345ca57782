"""The pet park's cameras: frames of the sample lake's generator, day or night (the closed
loop's), and the camera that calls production while ``mlops demo`` runs the pipeline."""

from __future__ import annotations

import threading

import requests

from components.common.storage import open_store
from components.datagen.core import LakeSpec, render
from components.deploy.client import v1_body
from components.deploy.router import REVISION_HEADER, VERSION_HEADER


class Camera:
    """Frames from the sample lake's generator, never the training images (other seed)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.next_index = {"day": 0, "night": 0}

    def frames(self, condition: str, n: int, view: str = "usual") -> list[tuple[str, bytes]]:
        """The next ``n`` frames of ``condition`` (``day``, ``night`` …), seen from ``view``
        (``usual``, or ``moved``: the camera was knocked; ``components.datagen.core.VIEWS``)."""
        spec = LakeSpec(n=1_000_000, size=self.size, seed=self.seed, condition=condition,
                        view=view)
        first = self.next_index[condition]
        self.next_index[condition] += n
        return [render(spec, i) for i in range(first, first + n)]


class ProductionCamera:
    """The park's camera for the demo: while the pipeline runs, sends a frame to the production
    endpoint (the router) every ``interval`` seconds and counts the answers by the revision and
    version that served them, so the demo shows live traffic split during the release and that
    no frame failed across it.

    Args:
        target: The local target whose production endpoint to call.
        frames: Encoded images to send in turn.
    """

    def __init__(self, target, frames: list[bytes], interval: float = 0.1):
        self.target, self.frames, self.interval = target, frames, interval
        self.answers: dict[tuple[str, str], int] = {}
        self.failed: list[str] = []
        self.endpoint = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="demo-camera")

    @classmethod
    def from_lake(cls, target, lake_uri: str, n: int = 40, **kwargs) -> ProductionCamera:
        lake = open_store(lake_uri)
        keys = [o.key for o in lake.list() if o.key.lower().endswith((".jpg", ".jpeg", ".png"))]
        return cls(target, [lake.get(k) for k in keys[:: max(1, len(keys) // n)][:n]], **kwargs)

    def start(self) -> ProductionCamera:
        if self.frames:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def _run(self) -> None:
        session, i = requests.Session(), 0
        while not self._stop.wait(self.interval):
            dep = self.target.status("production")
            if dep is None or dep.url == dep.stable.url:  # nothing (or no router) yet
                continue
            self.endpoint = dep.url
            try:
                r = session.post(f"{dep.url}/v1/models/{dep.name}:predict",
                                 json=v1_body([self.frames[i % len(self.frames)]]), timeout=10)
                if r.status_code == 200:
                    key = (r.headers.get(REVISION_HEADER, "?"), r.headers.get(VERSION_HEADER, "?"))
                    self.answers[key] = self.answers.get(key, 0) + 1
                else:
                    self.failed.append(f"HTTP {r.status_code}")
            except requests.RequestException as exc:
                self.failed.append(type(exc).__name__)
            i += 1

    def summary(self) -> str:
        total = sum(self.answers.values())
        if not total and not self.failed:
            return "Camera: production had no endpoint while the pipeline ran."
        parts = ", ".join(f"version {v} ({role}) {n}"
                          for (role, v), n in sorted(self.answers.items(), key=lambda x: x[0][1]))
        return (f"Camera at {self.endpoint}: {total} frames answered ({parts}), "
                f"{len(self.failed)} failed")
