"""One contract, both backends: the local directory store and S3 over HTTP (moto server)."""

from __future__ import annotations

import threading

import pytest

from components.common.storage import (
    PUBLISHED_MARKER,
    AlreadyExistsError,
    LocalStore,
    ObjectNotFoundError,
    S3Store,
    StorageError,
    UnsafeKeyError,
    open_store,
    s3_settings_from_env,
)


def test_put_get_exists_delete_roundtrip(store_uri):
    store = open_store(store_uri)
    assert not store.exists("a/b.bin")
    store.put("a/b.bin", b"\x00\x01payload")
    assert store.exists("a/b.bin")
    assert store.get("a/b.bin") == b"\x00\x01payload"
    store.put("a/b.bin", b"new")  # overwrite is allowed without if_absent
    assert store.get("a/b.bin") == b"new"
    store.delete("a/b.bin")
    assert not store.exists("a/b.bin")
    store.delete("a/b.bin")  # deleting an absent object is not an error


def test_get_missing_raises_not_found(store_uri):
    with pytest.raises(ObjectNotFoundError, match="nope.txt"):
        open_store(store_uri).get("nope.txt")


def test_list_is_recursive_sorted_and_relative(store_uri):
    store = open_store(store_uri)
    for key in ["z.txt", "cats/2.jpg", "cats/1.jpg", "dogs/deep/3.jpg"]:
        store.put(key, key.encode())
    assert [o.key for o in store.list()] == ["cats/1.jpg", "cats/2.jpg", "dogs/deep/3.jpg",
                                             "z.txt"]
    assert [o.key for o in store.list("cats")] == ["cats/1.jpg", "cats/2.jpg"]
    sizes = {o.key: o.size for o in store.list()}
    assert sizes["z.txt"] == len(b"z.txt")
    assert list(store.list("missing")) == []


def test_fingerprint_changes_when_content_changes(store_uri):
    store = open_store(store_uri)
    store.put("f.bin", b"one")
    before = next(store.list()).fingerprint
    store.put("f.bin", b"two-longer")
    after = next(store.list()).fingerprint
    assert before and after and before != after


def test_child_store_scopes_keys(store_uri):
    store = open_store(store_uri)
    child = store.child("sub/dir")
    child.put("x.txt", b"x")
    assert store.get("sub/dir/x.txt") == b"x"
    assert [o.key for o in child.list()] == ["x.txt"]
    assert child.uri == store.uri + "/sub/dir"
    assert open_store(child.uri).get("x.txt") == b"x"


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "", "a//b", "./a", "a\\b"])
def test_unsafe_keys_are_rejected(store_uri, key):
    store = open_store(store_uri)
    for op in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key)):
        with pytest.raises(UnsafeKeyError):
            op()


def test_put_if_absent_is_create_only(store_uri):
    store = open_store(store_uri)
    store.put("once", b"first", if_absent=True)
    with pytest.raises(AlreadyExistsError):
        store.put("once", b"second", if_absent=True)
    assert store.get("once") == b"first"


def test_concurrent_create_only_writes_have_exactly_one_winner(store_uri):
    store = open_store(store_uri)
    winners, losers = [], []

    def attempt(i):
        try:
            store.put("slot", str(i).encode(), if_absent=True)
            winners.append(i)
        except AlreadyExistsError:
            losers.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert store.get("slot") == str(winners[0]).encode()


def test_publish_is_complete_verified_and_immutable(store_uri):
    store = open_store(store_uri)
    files = {"manifest.csv": b"key,label\n", "stats/train.json": b"{}"}
    assert not store.is_published("v1")
    marker = store.publish("v1", files)
    assert store.is_published("v1")
    assert set(marker["files"]) == set(files)
    assert store.read_published("v1", "stats/train.json") == b"{}"
    assert {o.key for o in store.list("v1")} == {"v1/manifest.csv", "v1/stats/train.json",
                                                 f"v1/{PUBLISHED_MARKER}"}
    with pytest.raises(AlreadyExistsError, match="immutable"):
        store.publish("v1", {"manifest.csv": b"changed"})
    assert store.read_published("v1", "manifest.csv") == b"key,label\n"


def test_tampered_published_file_fails_verification(store_uri):
    store = open_store(store_uri)
    store.publish("v1", {"model.onnx": b"weights"})
    store.put("v1/model.onnx", b"tampered")
    with pytest.raises(StorageError, match="Checksum mismatch"):
        store.read_published("v1", "model.onnx")


def test_unpublished_folder_is_not_readable_as_published(store_uri):
    store = open_store(store_uri)
    store.put("v2/manifest.csv", b"half-written")  # files without the marker
    assert not store.is_published("v2")
    with pytest.raises(ObjectNotFoundError, match="not a published folder"):
        store.read_published("v2", "manifest.csv")


def test_local_publish_leaves_no_staging_on_failure(tmp_path):
    store = LocalStore(tmp_path)
    store.publish("v1", {"a": b"1"})
    with pytest.raises(AlreadyExistsError):
        store._publish_files("v1", {"a": b"2"}, b"{}")  # a racing publisher loses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    assert store.get("v1/a") == b"1"


def test_open_store_dispatches_by_scheme(tmp_path, s3_env):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    s3 = open_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3Store) and s3.bucket == "bucket" and s3.prefix == "some/prefix"
    with pytest.raises(ValueError, match="Unsupported storage URI"):
        open_store("gs://bucket/x")


def test_s3_settings_follow_conventional_variables():
    s = s3_settings_from_env({"MINIO_ENDPOINT": "minio-service.kubeflow:9000",
                              "MINIO_SECURE": "false", "MINIO_ACCESS_KEY": "minio",
                              "MINIO_SECRET_KEY": "minio123"})
    assert (s.endpoint, s.secure, s.access_key, s.secret_key) == (
        "minio-service.kubeflow:9000", False, "minio", "minio123")
    s = s3_settings_from_env({"AWS_ENDPOINT_URL": "https://seaweedfs.kubeflow:8333",
                              "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                              "S3_VERIFY_SSL": "0", "AWS_REGION": "eu-west-1"})
    assert (s.endpoint, s.secure, s.verify_tls, s.region) == (
        "seaweedfs.kubeflow:8333", True, False, "eu-west-1")
    with pytest.raises(ValueError, match="Invalid S3 endpoint"):
        s3_settings_from_env({"S3_ENDPOINT": "ftp://x"})


# --- faults: lost replies, partitions, missing settings, concurrent publishers ---------------

def _s3_store_via(proxy_url, bucket, monkeypatch, **env):
    """An S3Store whose requests go through ``proxy_url`` (the fault proxy)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return S3Store(bucket, "root")


def _conditional_put_to(suffix):
    return lambda method, path, headers: (method == "PUT" and path.endswith(suffix)
                                          and headers.get("if-none-match") == "*")


@pytest.mark.timeout(60)
def test_s3_create_only_write_whose_reply_was_lost_succeeds(s3_uri, monkeypatch):
    from faultproxy import FaultProxy

    base = open_store(s3_uri)
    with FaultProxy(s3_env_endpoint(), drop_reply=_conditional_put_to("/once")) as proxy:
        store = _s3_store_via(proxy.url, base.bucket, monkeypatch)
        store.put("once", b"mine", if_absent=True)  # written, reply lost, retried: 412
        assert proxy.dropped == [("PUT", f"/{base.bucket}/root/once")]
        with pytest.raises(AlreadyExistsError, match="different content"):
            store.put("once", b"someone else's", if_absent=True)
    assert base.get("once") == b"mine"


def s3_env_endpoint():
    import os

    return os.environ["AWS_ENDPOINT_URL"]


@pytest.mark.timeout(60)
def test_s3_publish_whose_marker_reply_was_lost_succeeds(s3_uri, monkeypatch):
    from faultproxy import FaultProxy

    base = open_store(s3_uri)
    files = {"manifest.csv": b"key,label\n", "report.json": b"{}"}
    with FaultProxy(s3_env_endpoint(), drop_reply=_conditional_put_to(PUBLISHED_MARKER)) as proxy:
        store = _s3_store_via(proxy.url, base.bucket, monkeypatch)
        marker = store.publish("versions/abc", files)
        assert len(proxy.dropped) == 1
    assert base.published_marker("versions/abc") == marker
    assert base.read_published("versions/abc", "report.json") == b"{}"
    assert not any("_PUBLISHING" in o.key for o in base.list())  # the lock is gone


@pytest.mark.timeout(60)
def test_s3_partition_fails_fast_and_names_the_endpoint(s3_uri, monkeypatch):
    import time

    from faultproxy import FaultProxy

    with FaultProxy(blackhole=True) as proxy:
        store = _s3_store_via(proxy.url, "any-bucket", monkeypatch,
                              MLOPS_S3_CONNECT_TIMEOUT="1", MLOPS_S3_READ_TIMEOUT="0.5",
                              MLOPS_S3_RETRIES="1")
        for op in (lambda: store.get("k"), lambda: store.put("k", b"x", if_absent=True),
                   lambda: list(store.list()), lambda: store.exists("k")):
            started = time.monotonic()
            with pytest.raises(StorageError, match=f"{proxy.url} did not answer.*READ_TIMEOUT"):
                op()
            assert time.monotonic() - started < 8  # (read 0.5 s) x 2 tries + back-off


@pytest.mark.timeout(90)
def test_s3_partition_costs_one_bound_then_one_try_per_request_until_an_answer(s3_uri,
                                                                               monkeypatch):
    """What a partition costs a step adds up to one request's bound: once a request has used
    up its retries, the next ones are tried once each (cleaning up, reporting) instead of a
    whole bound each; the first answer after the store's return ends that."""
    from faultproxy import FaultProxy

    base = open_store(s3_uri)
    with FaultProxy(s3_env_endpoint()) as proxy:
        store = _s3_store_via(proxy.url, base.bucket, monkeypatch, MLOPS_S3_CONNECT_TIMEOUT="2",
                              MLOPS_S3_READ_TIMEOUT="0.5", MLOPS_S3_RETRIES="2")
        store.put("k", b"x")
        proxy.partition()
        tries = []
        for op in (lambda: store.get("k"), lambda: store.exists("k"),
                   lambda: store.put("j", b"y"), lambda: store.delete("k")):
            before = proxy.unanswered
            with pytest.raises(StorageError, match="did not answer"):
                op()
            tries.append(proxy.unanswered - before)
        assert tries == [3, 1, 1, 1]  # 1 + MLOPS_S3_RETRIES, then one try each
        proxy.restore()
        assert store.get("k") == b"x"  # answered: the endpoint is up again
        proxy.partition()
        before = proxy.unanswered
        with pytest.raises(StorageError, match="did not answer"):
            store.get("k")
        assert proxy.unanswered - before == 3  # a new partition gets the whole bound again


def test_s3_without_an_endpoint_names_the_variables(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith(("AWS_", "S3_", "MINIO_")):
            monkeypatch.delenv(name)
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL.*https://s3.amazonaws.com"):
        open_store("s3://bucket/prefix")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.amazonaws.com")  # asked for explicitly
    assert open_store("s3://bucket/prefix").settings.endpoint == "s3.amazonaws.com"
    monkeypatch.setenv("MLOPS_S3_READ_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MLOPS_S3_READ_TIMEOUT: 'soon'"):
        open_store("s3://bucket/prefix")


@pytest.mark.timeout(120)
def test_concurrent_publishers_of_one_folder_leave_one_intact_version(store_uri):
    """Same version, different report (two lakes with the same images): one wins, whole."""
    store = open_store(store_uri)
    files = {f"part-{i:02d}.csv": f"row {i}\n".encode() * 50 for i in range(12)}
    outcomes: dict[int, object] = {}

    def publish(i):
        mine = {**files, "report.json": f'{{"source": "lake-{i}"}}'.encode()}
        try:
            outcomes[i] = store.publish("versions/v", mine)
        except AlreadyExistsError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcomes.items() if isinstance(o, dict)]
    assert len(winners) == 1 and len(outcomes) == 4
    marker = store.published_marker("versions/v")
    for name in marker["files"]:
        store.read_published("versions/v", name)  # every checksum holds
    assert store.read_published("versions/v", "report.json") == (
        f'{{"source": "lake-{winners[0]}"}}'.encode())


@pytest.mark.timeout(120)
def test_concurrent_publishers_of_identical_files_all_succeed(store_uri):
    store = open_store(store_uri)
    files = {f"part-{i:02d}.csv": f"row {i}\n".encode() for i in range(8)}
    results, errors = [], []

    def publish():
        try:
            results.append(store.publish("versions/same", files))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert all(r["files"] == results[0]["files"] for r in results)
    assert store.publish("versions/same", files) == results[0]  # a retry later is a no-op


@pytest.mark.timeout(60)
def test_s3_publish_takes_over_the_lock_of_a_dead_publisher(s3_uri, monkeypatch):
    import json
    import socket
    import subprocess
    import sys
    import time

    store = open_store(s3_uri)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    # A crashed publisher on this host left a lock and half its files.
    store.put("v/_PUBLISHING-000001", json.dumps(
        {"owner": "x", "host": socket.gethostname(), "pid": int(gone.stdout), "beat": 0}).encode())
    store.put("v/a.csv", b"half-written")
    started = time.monotonic()
    store.publish("v", {"a.csv": b"complete"})
    assert time.monotonic() - started < 10
    assert store.read_published("v", "a.csv") == b"complete"
    # A lock from another machine that stops renewing is taken over after the lease.
    monkeypatch.setenv("MLOPS_PUBLISH_LEASE", "1")
    store.put("w/_PUBLISHING-000001", json.dumps(
        {"owner": "y", "host": "another-host", "pid": 1, "beat": 0}).encode())
    store.publish("w", {"b.csv": b"b"})
    assert store.read_published("w", "b.csv") == b"b"
    assert not any("_PUBLISHING" in o.key for o in store.list())
