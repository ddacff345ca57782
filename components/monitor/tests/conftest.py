"""Fixtures of the monitor's analysis tests: a registered production version with its
reference, and traffic simulated from the sample lake through the packaged model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

MODEL = "pet-classifier"
T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z: every simulated window starts at a fixed time


@dataclass
class MonitorSetup:
    registry_uri: str
    model: str
    version: int
    sim: object  # the packaged model, as simulate.simulated_model opens it
    reference: object  # contract.Reference


@pytest.fixture(scope="session")
def monitor_setup(package_dir, trained_model_dir, dataset_dirs, tmp_path_factory):
    """Version 1 of ``pet-classifier`` in production, registered with its package, PyTorch
    weights and monitoring reference (no saved detector: each test picks the backend)."""
    import shutil
    from pathlib import Path

    from components.common.registry import ModelRegistry
    from components.ingest.snapshot import read_split
    from components.monitor.reference import build_reference_files, load_reference
    from components.monitor.simulate import simulated_model

    registry_uri = str(tmp_path_factory.mktemp("registry"))
    package = Path(package_dir)
    files = {p.relative_to(package).as_posix(): p.read_bytes()
             for p in sorted(package.rglob("*")) if p.is_file()}
    if "torch/model.pt" not in files:  # older package fixture: add the weights
        shutil.copytree(trained_model_dir, tmp_path_factory.mktemp("t") / "torch",
                        dirs_exist_ok=True)
        for name in ("model.pt", "model.json"):
            files[f"torch/{name}"] = (Path(trained_model_dir) / name).read_bytes()
    rows, meta = read_split(dataset_dirs[0])
    test_rows, _ = read_split(dataset_dirs[1])
    ref_files = build_reference_files(files["model.onnx"], rows, meta["dataset_version"],
                                      detector=False, test_rows=test_rows)
    files.update({f"reference/{k}": v for k, v in ref_files.items()})
    reg = ModelRegistry(registry_uri)
    mv = reg.register(MODEL, files, {"dataset_version": meta["dataset_version"]})
    reg.set_alias(MODEL, "production", mv.version, reason="test")
    ref = load_reference(registry_uri, MODEL, mv.version,
                         cache_dir=tmp_path_factory.mktemp("refcache"))
    return MonitorSetup(registry_uri, MODEL, mv.version, simulated_model(files["model.onnx"]),
                        ref)


def simulate_window(setup: MonitorSetup, uri: str, *, n: int = 120, condition: str = "day",
                    cat_fraction: float = 0.5, seed: int = 101, start: float = T0,
                    label_share: float = 0.0, image_rate: float = 0.0, first_index: int = 0,
                    seconds_apart: float = 10.0, view: str = "usual") -> dict:
    """Captures ``n`` requests of generated images in the store at ``uri`` from ``start``."""
    from components.datagen.core import LakeSpec
    from components.monitor.simulate import simulate

    spec = LakeSpec(n=n, size=32, seed=seed, condition=condition, cat_fraction=cat_fraction,
                    view=view)
    return simulate(setup.sim, uri, setup.model, str(setup.version), spec, start_time=start,
                    seconds_apart=seconds_apart, first_index=first_index,
                    label_share=label_share, image_rate=image_rate, seed=seed)
