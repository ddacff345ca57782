"""Release holds and approvals in the registry: after a hold, a version is released only if a
person approved it since, or lifted the hold."""

from __future__ import annotations

import time

import pytest

from components.common.registry import ModelRegistry, ReleaseHeld


@pytest.fixture
def registry(store_uri) -> ModelRegistry:
    reg = ModelRegistry(store_uri)
    for i in (1, 2):
        reg.register("pets", {"model.onnx": f"w{i}".encode()}, {"dataset_version": "t"})
    return reg


def test_a_hold_stops_releases_until_an_approval_after_it(registry):
    registry.approve("pets", 1, note="before the hold", actor="qa")
    assert registry.check_release("pets", 1) == {}  # nothing held
    time.sleep(0.002)  # the approval and the hold are timed to the millisecond
    hold, placed = registry.place_hold("pets", "accuracy collapse", evidence="run-9", by="gov")
    assert placed and hold["action"] == "hold" and hold["seq"] == 1 and hold["by"] == "gov"
    again, placed = registry.place_hold("pets", "another collapse")
    assert not placed and again == hold  # one hold at a time
    with pytest.raises(ReleaseHeld, match="its approval predates the hold"):
        registry.check_release("pets", 1)
    with pytest.raises(ReleaseHeld, match="nobody approved it since.*mlops registry approve "
                                          "pets 2.*mlops govern hold lift pets"):
        registry.check_release("pets", 2)
    time.sleep(0.002)
    registry.approve("pets", 2, note="checked the night images", actor="alice")
    allowed = registry.check_release("pets", 2)
    assert allowed["hold"] == hold and allowed["approval"]["by"] == "alice"


def test_lifting_a_hold_is_recorded_and_needs_a_reason(registry):
    with pytest.raises(ValueError, match="not held"):
        registry.lift_hold("pets", "nothing to lift")
    registry.place_hold("pets", "collapse")
    with pytest.raises(ValueError, match="--note"):
        registry.lift_hold("pets", "")
    lifted = registry.lift_hold("pets", "incident closed", by="alice")
    assert (lifted["action"], lifted["reason"], lifted["seq"]) == ("lift", "incident closed", 2)
    assert registry.active_hold("pets") is None
    assert registry.check_release("pets", 2) == {}
    assert [r["action"] for r in registry.hold_records("pets")] == ["hold", "lift"]
    assert [o.key for o in registry.store.list("pets/holds")] == [
        "pets/holds/00000001.json", "pets/holds/00000002.json"]
