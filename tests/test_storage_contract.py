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
