"""The pet park's camera: frames of the sample lake's generator, day or night."""

from __future__ import annotations

from components.datagen.core import LakeSpec, render


class Camera:
    """Frames from the sample lake's generator, never the training images (other seed)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.next_index = {"day": 0, "night": 0}

    def frames(self, condition: str, n: int) -> list[tuple[str, bytes]]:
        spec = LakeSpec(n=1_000_000, size=self.size, seed=self.seed, condition=condition)
        first = self.next_index[condition]
        self.next_index[condition] += n
        return [render(spec, i) for i in range(first, first + n)]
