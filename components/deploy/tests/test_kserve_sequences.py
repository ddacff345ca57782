"""Sequences of release operations on KServe, as production meets them one after another.

``KServeTarget`` drives the stand-in of the Kubernetes API with KServe and Knative behind it
(``kube_standin.py``, each rule citing its source), which keeps every route Knative applied.
Each test asserts what production would see: the largest share a rolled-back (rejected)
revision got after its rejection, that a status read during every transition answered, where
the traffic is in the end and which revisions keep pods, and that a governance rollback keeps
the configuration the release used.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
import requests

from components.common import k8s
from components.deploy.targets.base import DeploymentError
from components.deploy.targets.kserve import KServeTarget
from components.deploy.tests import test_kserve_target as kt
from components.deploy.tests.kube_standin import KubeStandIn
from components.govern import actions

pytestmark = pytest.mark.timeout(120)

NS, MODEL, PROD = kt.NS, kt.MODEL, kt.PROD
standin, registry = kt.standin, kt.registry  # the stand-in; an S3 registry with versions 1-3

#: What the release pipeline was given (predictor_image, predictor_service_account, …).
RELEASED = k8s.ServingConfig(image="registry.example/pets/predictor:7",
                             service_account="pets-predictor", s3_secret="pets-s3", cpu="1",
                             memory="2Gi")


def _add_predictor_objects(server: KubeStandIn, cfg: k8s.ServingConfig) -> None:
    server.add_core("serviceaccounts", NS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                            "metadata": {"name": cfg.service_account,
                                                         "namespace": NS}})
    server.add_core("secrets", NS, {"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": cfg.s3_secret, "namespace": NS}})


def _target(server: KubeStandIn, reg, config: k8s.ServingConfig | None = RELEASED,
            timeout_s: float = 10) -> KServeTarget:
    return KServeTarget(reg.uri, MODEL, NS, config=config, api_client=kt._client(server.url),
                        poll_s=0.02, timeout_s=timeout_s)


@pytest.fixture
def cluster(standin):
    _add_predictor_objects(standin, RELEASED)
    return standin


@pytest.fixture
def release(cluster, registry):
    """The release pipeline's target: opened with the release's serving parameters."""
    return _target(cluster, registry)


@pytest.fixture
def governance(cluster, registry):
    """Governance's target: opened, as the monitoring pipeline and `mlops govern` open it,
    without any serving parameters."""
    return _target(cluster, registry, config=None)


class StatusWatch:
    """Reads the production status over and over from another client while a sequence runs;
    keeps what each read said and every exception."""

    def __init__(self, server: KubeStandIn, reg):
        self.target = _target(server, reg, config=None)
        self.reads: list[tuple[str, str]] = []  # (stable revision, canary revision)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                dep = self.target.status(PROD)
            except Exception as exc:  # noqa: BLE001 - what the test asserts never happens
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if dep is not None:
                self.reads.append(((dep.stable.detail["revision"] if dep.stable else ""),
                                   (dep.canary.detail["revision"] if dep.canary else "")))

    def mark(self) -> int:
        return len(self.reads)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors[:3]
        assert len(self.reads) > 10, "the status was hardly read"


@pytest.fixture
def watch(cluster, registry):
    w = StatusWatch(cluster, registry)
    yield w
    w.stop()


def _revisions(server: KubeStandIn, version: int) -> list[str]:
    return [r for r in server.revisions(NS)
            if server.objects[("revisions", NS, r)]["metadata"]["labels"].get(
                k8s.REGISTRY_VERSION_LABEL) == str(version)]


def _configuration(server: KubeStandIn, revision: str) -> dict:
    """What a revision runs: image, ServiceAccount, and the recorded Secret."""
    rev = server.objects[("revisions", NS, revision)]
    recorded = json.loads(rev["metadata"]["annotations"][k8s.SERVING_CONFIG_ANNOTATION])
    return {"image": rev["spec"]["containers"][0]["image"],
            "service_account": rev["spec"]["serviceAccountName"],
            "s3_secret": recorded["s3_secret"]}


RELEASED_CONFIGURATION = {"image": RELEASED.image, "service_account": RELEASED.service_account,
                          "s3_secret": RELEASED.s3_secret}


def _gone(server: KubeStandIn, revision: str) -> bool:
    """In no route, so Knative keeps no pods for it."""
    return server.routing_state(NS, revision) == "reserve" and server.pods(NS, revision) == 0


def _release_v1_then_promote_v2(release: KServeTarget, registry) -> None:
    release.deploy(PROD, 1)
    registry.set_alias(MODEL, "production", 1, reason="first release")
    release.start_canary(PROD, 2, 10)
    release.promote(PROD)
    registry.set_alias(MODEL, "production", 2, reason="promoted")


# ---- the sequences ---------------------------------------------------------------------


def test_release_reject_release_promote(cluster, release, watch):
    release.deploy(PROD, 1)
    release.start_canary(PROD, 2, 10)
    (rev2,) = _revisions(cluster, 2)
    rejected, rejected_read = cluster.mark(), watch.mark()
    release.rollback(PROD)
    cluster.behave(3, 0.5)  # the next canary takes a while to start
    release.start_canary(PROD, 3, 10)
    release.set_canary_traffic(PROD, 50)
    dep = release.promote(PROD)

    assert cluster.max_traffic("pets", rev2, after=rejected) == 0
    (rev3,) = _revisions(cluster, 3)
    assert cluster.routed(NS, "pets") == {rev3: 100}
    assert dep.stable.version == 3 and dep.canary is None
    assert _gone(cluster, rev2)
    assert rev2 not in {r for pair in watch.reads[rejected_read + 10:] for r in pair}


@pytest.mark.parametrize("replaced", [True, False],
                         ids=["rejected-replaced", "replacement-never-ready"])
def test_release_reject_then_governance_rollback(cluster, release, governance, registry,
                                                 replaced, watch):
    _release_v1_then_promote_v2(release, registry)
    release.start_canary(PROD, 3, 10)
    (rev3,) = _revisions(cluster, 3)
    if not replaced:
        cluster.behave(2, None)  # the fresh revision of version 2 never becomes ready
        release.timeout_s = 2  # how long the rollback waits for it
    rejected = cluster.mark()
    dep = release.rollback(PROD)
    assert dep.stable.version == 2 and dep.canary is None
    if not replaced:  # held at 0% ("latest" still resolves to it) until a newer one is ready
        assert dep.stable.detail["held_revision"] == rev3
        assert not _gone(cluster, rev3)
    cluster.behave(1, 0.5)  # the restored version takes a while to start

    result = actions.rollback(governance, 2, "error rate over the limit")

    assert (result["action"], result["from"], result["to"]) == ("rollback", 2, 1)
    assert cluster.max_traffic("pets", rev3, after=rejected) == 0
    restored = _revisions(cluster, 1)[-1]
    assert cluster.routed(NS, "pets") == {restored: 100}
    assert _configuration(cluster, restored) == RELEASED_CONFIGURATION
    assert all(_gone(cluster, rev) for rev in [rev3, *_revisions(cluster, 2)])
    assert governance.status(PROD).stable.version == 1
    assert registry.aliases(MODEL)["production"] == 1


def test_release_promote_then_governance_rollback(cluster, release, governance, registry, watch):
    _release_v1_then_promote_v2(release, registry)
    (rev2,) = _revisions(cluster, 2)
    cluster.behave(1, 0.5)
    judged = cluster.mark()

    result = actions.rollback(governance, 2, "accuracy on labelled feedback dropped")

    assert (result["action"], result["from"], result["to"]) == ("rollback", 2, 1)
    # Version 2 serves until the restored revision is ready (no request goes to a revision
    # that is not), then never again; its share only ever went down.
    shares = cluster.shares("pets", rev2, after=judged)
    assert shares[-1] == 0 and shares == sorted(shares, reverse=True)
    restored = _revisions(cluster, 1)[-1]
    assert cluster.routed(NS, "pets") == {restored: 100}
    assert _configuration(cluster, restored) == RELEASED_CONFIGURATION
    assert _gone(cluster, rev2)


@pytest.mark.parametrize("step", ["canary", "replacement", "redeploy", "restore"])
def test_a_revision_that_never_becomes_ready_gets_nothing_at_any_step(cluster, release,
                                                                      governance, registry,
                                                                      step, watch):
    """Each step that makes a revision, with that revision never ready: production keeps
    being served by what served it, and neither the unready nor a rejected revision gets a
    share."""
    release.timeout_s = governance.timeout_s = 2
    release.deploy(PROD, 1)
    (rev1,) = _revisions(cluster, 1)
    started = cluster.mark()
    if step == "canary":
        cluster.behave(2, None)
        with pytest.raises(DeploymentError, match="ready canary revision of version 2"):
            release.start_canary(PROD, 2, 10)
        release.rollback(PROD)  # what the release does next
        unready = _revisions(cluster, 2)
        serving = _revisions(cluster, 1)[-1]  # a fresh revision of version 1
    elif step == "replacement":
        release.start_canary(PROD, 2, 10)
        cluster.behave(1, None)  # the fresh revision that would replace the rejected one
        rejected = cluster.mark()
        dep = release.rollback(PROD)  # traffic back at once; the replacement times out
        assert dep.stable.detail["revision"] == rev1
        unready = _revisions(cluster, 1)[1:]
        (rev2,) = _revisions(cluster, 2)
        release.start_canary(PROD, 3, 10)  # the next release
        release.promote(PROD)
        assert cluster.max_traffic("pets", rev2, after=rejected) == 0
        serving = _revisions(cluster, 3)[0]
    elif step == "redeploy":
        release.start_canary(PROD, 2, 10)
        (rev2,) = _revisions(cluster, 2)
        cluster.behave(3, None)
        redeployed = cluster.mark()
        with pytest.raises(DeploymentError, match="version 3"):
            release.deploy(PROD, 3)  # over a running canary
        assert cluster.max_traffic("pets", rev2, after=redeployed) == 0
        unready = _revisions(cluster, 3)
        serving = rev1
    else:
        release.start_canary(PROD, 2, 10)
        release.promote(PROD)
        registry.set_alias(MODEL, "production", 1)
        registry.set_alias(MODEL, "production", 2)
        cluster.behave(1, None)
        with pytest.raises(DeploymentError, match="version 1"):
            actions.rollback(governance, 2, "drift")
        unready = _revisions(cluster, 1)[1:]
        serving = _revisions(cluster, 2)[0]
        assert registry.aliases(MODEL)["production"] == 2  # not moved: nothing was restored
    assert unready and all(cluster.max_traffic("pets", rev, after=started) == 0
                           for rev in unready)
    assert cluster.routed(NS, "pets") == {serving: 100}


def test_a_cluster_without_knative_fails_at_once_saying_what_to_install(registry, tmp_path):
    """KServe's default install (Standard mode) has no Knative: KServe would record
    ServerlessModeRejected and start nothing, and a release would wait for ten minutes."""
    server = KubeStandIn(tick_s=0.01, knative=False)
    server.url = server.start()
    try:
        _add_predictor_objects(server, RELEASED)
        target = _target(server, registry, timeout_s=600)
        with pytest.raises(DeploymentError, match=r"Knative Serving is not installed.*"
                                                  r"ServerlessModeRejected.*knative.dev/docs"):
            target.deploy(PROD, 1)
        assert not [k for k in server.objects if k[0] == "inferenceservices"]
        assert not [p for m, p in server.requests if "inferenceservices" in p]  # no wait
        # One created anyway (by hand): KServe rejects the mode, and the status says why.
        obj = target._object(PROD, 1, RELEASED)
        requests.post(f"{server.url}/apis/serving.kserve.io/v1beta1/namespaces/{NS}/"
                      "inferenceservices", json=obj, timeout=5).raise_for_status()
        deadline = time.monotonic() + 10
        while not server.events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.events[0]["reason"] == "ServerlessModeRejected"
        with pytest.raises(DeploymentError, match="Knative Serving is not installed"):
            target.status(PROD)
    finally:
        server.stop()


def test_a_redeploy_with_another_configuration_waits_for_its_own_revision(cluster, registry):
    """The registry version is the same, so only a newer Knative generation tells the new
    revision's status from the old one's."""
    _target(cluster, registry, config=k8s.ServingConfig()).deploy(PROD, 1)
    cluster.behave(1, 0.3)
    dep = _target(cluster, registry).deploy(PROD, 1)
    old, new = _revisions(cluster, 1)
    assert dep.stable.detail["revision"] == new
    assert cluster.routed(NS, "pets") == {new: 100}
    assert _configuration(cluster, new) == RELEASED_CONFIGURATION


# ---- every state the controllers can produce -------------------------------------------


REV = {"rev1": 1, "rev2": 2, "norev": None}

STATES = {
    "no status yet": (None, {}),
    "mode only": (None, {"deploymentMode": "Knative"}),
    "first revision not ready": (None, {"deploymentMode": "Knative", "components": {
        "predictor": {"latestCreatedRevision": "rev1"}}}),
    # Knative keeps the old route while the new target cannot be resolved (traffic.go:320-350):
    # KServe's spec asks for a canary, the route has only the "latest" tag, no "prev".
    "canary asked, route not resolved": (10, {"deploymentMode": "Knative", "components": {
        "predictor": {"latestCreatedRevision": "rev2", "latestReadyRevision": "rev1",
                      "latestRolledoutRevision": "rev1", "traffic": [
                          {"tag": "latest", "revisionName": "rev1", "percent": 100,
                           "latestRevision": True, "url": "http://latest-pets-predictor.x"}]}}}),
    "canary ready, prev tag without url": (10, {"deploymentMode": "Knative", "components": {
        "predictor": {"latestCreatedRevision": "rev2", "latestReadyRevision": "rev2",
                      "latestRolledoutRevision": "rev1", "traffic": [
                          {"tag": "latest", "revisionName": "rev2", "percent": 10,
                           "latestRevision": True},
                          {"tag": "prev", "revisionName": "rev1", "percent": 90}]}}}),
    "targets without names or shares": (0, {"deploymentMode": "Knative", "components": {
        "predictor": {"latestRolledoutRevision": "rev1", "traffic": [{}, {"tag": None},
                                                                      {"percent": "x"}]}}}),
    "rolled-out revision gone": (None, {"deploymentMode": "Knative", "components": {
        "predictor": {"latestRolledoutRevision": "gone", "latestReadyRevision": "gone"}}}),
    "revision without a version label": (None, {"deploymentMode": "Knative", "components": {
        "predictor": {"latestRolledoutRevision": "norev", "latestReadyRevision": "norev"}}}),
    "wrong types everywhere": (None, {"deploymentMode": "Knative", "components": [],
                                      "conditions": "Ready", "address": "x", "url": 7}),
    "wrong types inside": (None, {"deploymentMode": "Knative", "components": {
        "predictor": {"traffic": "all", "latestRolledoutRevision": "rev1"}}}),
}


@pytest.mark.parametrize("state", list(STATES))
def test_status_answers_every_state_the_controllers_can_produce(registry, state):
    server = KubeStandIn(tick_s=3600)  # the controllers stay still: the state is as written
    server.url = server.start()
    try:
        target = _target(server, registry)
        percent, status = STATES[state]
        obj = k8s.inference_service(replace(RELEASED, name="pets", namespace=NS), 2)
        if percent is not None:
            obj["spec"]["predictor"]["canaryTrafficPercent"] = percent
        obj["status"] = status
        obj["metadata"].update(generation=1, resourceVersion="1")
        server.objects[("inferenceservices", NS, "pets")] = obj
        for name, version in REV.items():
            labels = {} if version is None else {k8s.REGISTRY_VERSION_LABEL: str(version)}
            server.objects[("revisions", NS, name)] = {
                "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                "metadata": {"name": name, "namespace": NS, "labels": labels,
                             "annotations": {}}, "spec": {}, "status": {}}
        dep = target.status(PROD)  # a DeploymentError would fail the test too: none is due
    finally:
        server.stop()
    stable = dep.stable.version if dep.stable else None
    canary = dep.canary.version if dep.canary else None
    expected = {"canary asked, route not resolved": (1, None),
                "canary ready, prev tag without url": (1, 2),
                "targets without names or shares": (1, None),
                "wrong types inside": (1, None)}.get(state, (None, None))
    assert (stable, canary) == expected
    if state == "canary asked, route not resolved":
        assert dep.stable.detail["pending_revision"] == "rev2"


# ---- who served what: records of Knative revisions and the roles the status gives them -----


def _served_by(revision: str, version: int, n: int, monitoring: str, monkeypatch) -> set[str]:
    """``n`` requests answered in the Knative revision ``revision``: the capture records the
    predictor itself makes (``PetClassifier._submit``, its capture writer), in the environment
    Knative gives every revision's container (``K_REVISION``, knative/serving knative-v1.21.1
    pkg/reconciler/revision/resources/env_var.go:31-42, deploy.go:265). Returns their ids."""
    import io
    import uuid

    import numpy as np
    from PIL import Image

    from components.common.images import decode_and_measure
    from components.monitor.capture import CaptureConfig, CaptureWriter
    from components.serve.predictor import PetClassifier, _Batch

    monkeypatch.setenv("K_REVISION", revision)
    monkeypatch.delenv("MLOPS_REVISION", raising=False)
    model = PetClassifier(MODEL, "unused: nothing is loaded")
    model.classes, model.registry_version = ["cats", "dogs"], str(version)
    model.model_version = f"m{version}"
    # Each pod writes its batches under its own name (its host name, in a cluster).
    model._capture = CaptureWriter(CaptureConfig(uri=monitoring, batch_seconds=0.1), MODEL,
                                   instance=f"{revision}-deployment-0")
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 60)).save(buf, "JPEG")
    _, stats = decode_and_measure(buf.getvalue(), 32)
    ids = set()
    for _ in range(n):
        batch = _Batch(x=np.zeros((1, 3, 32, 32), np.float32), protocol="v1",
                       request_id=uuid.uuid4().hex, started=time.perf_counter(),
                       probs=np.array([[0.8, 0.2]], np.float32), capture=True,
                       stats=[stats], quality=["ok"],
                       embeddings=np.array([[0.1, 0.2, 0.3]], np.float32))
        model._submit(batch, ["cats"], 0.004)
        ids.add(batch.request_id)
    assert model._capture.close()  # everything written
    return ids


def test_records_of_two_knative_revisions_are_told_apart_by_the_inference_service_status(
        cluster, release, registry, s3_uri, monkeypatch):
    """On KServe the canary is a second Knative revision, and no pod knows its role (it
    changes at promotion, without a restart): each record names its revision (K_REVISION),
    and the target's analysis gives it the role the InferenceService's status says."""
    monitoring = s3_uri + "/monitoring"
    start = time.time() - 1
    release.deploy(PROD, 1)
    (rev1,) = _revisions(cluster, 1)
    assert release.revision_roles(PROD) == {rev1: "stable"}
    release.start_canary(PROD, 2, 10)
    (rev2,) = _revisions(cluster, 2)
    # latestCreatedRevision (the canary, ready, 10% through "latest") and the rolled-out one.
    assert release.revision_roles(PROD) == {rev1: "stable", rev2: "canary"}
    stable_ids = _served_by(rev1, 1, 9, monitoring, monkeypatch)
    canary_ids = _served_by(rev2, 2, 3, monitoring, monkeypatch)

    from components.monitor.window import read_window

    win = read_window(monitoring, MODEL, start, time.time() + 1, with_labels=False)
    assert {r["request_id"] for r in win.records} == stable_ids | canary_ids
    # The pod recorded no role of its own (it cannot know it), only its revision.
    assert {(r["revision"], r["knative_revision"]) for r in win.records} == \
        {("", rev1), ("", rev2)}
    assert release.captured_traffic(PROD, start, time.time() + 1,
                                    monitoring_uri=monitoring) == \
        {"stable": 9, "canary": 3}
    release.set_canary_traffic(PROD, 50)  # a traffic change: same revisions, same roles
    assert release.captured_traffic(PROD, start, time.time() + 1,
                                    monitoring_uri=monitoring) == \
        {"stable": 9, "canary": 3}

    # Promoted: the canary's revision is the stable one now; the old one has no role left.
    release.promote(PROD)
    assert release.revision_roles(PROD) == {rev2: "stable"}
    assert release.captured_traffic(PROD, start, time.time() + 1,
                                    monitoring_uri=monitoring) == \
        {"stable": 3, "canary": 0, "": 9}

    # The next canary is rolled back: its records count under no role, never as stable.
    release.start_canary(PROD, 3, 10)
    (rev3,) = _revisions(cluster, 3)
    assert release.revision_roles(PROD) == {rev2: "stable", rev3: "canary"}
    rejected_ids = _served_by(rev3, 3, 4, monitoring, monkeypatch)
    assert release.captured_traffic(PROD, start, time.time() + 1,
                                    monitoring_uri=monitoring) == \
        {"stable": 3, "canary": 4, "": 9}
    release.rollback(PROD)
    # The rejected template is replaced by a fresh revision of version 2, which takes the
    # traffic (KServeTarget.rollback): the roles are the status's now, so the records of
    # revisions that left (the rejected canary's among them) count under no role; their
    # version (model_version) still says what served them.
    (fresh,) = [r for r in _revisions(cluster, 2) if r != rev2]
    assert release.revision_roles(PROD) == {fresh: "stable"}
    assert release.captured_traffic(PROD, start, time.time() + 1,
                                    monitoring_uri=monitoring) == \
        {"stable": 0, "canary": 0, "": 9 + 3 + 4}
    assert len(rejected_ids) == 4
