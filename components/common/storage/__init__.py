"""Object storage over URIs: one small interface, two backends.

Everything that reads or writes the data lake, the dataset snapshots, the model registry or
logs goes through :class:`ObjectStore`. A store is rooted at a URI and takes keys relative to
that root, written with ``/`` separators:

* ``s3://bucket/prefix`` -- any S3-compatible server through the ``minio`` client (MinIO,
  SeaweedFS as installed by Kubeflow Pipelines 2.16+, AWS S3, Ceph RGW ...). Endpoint and
  credentials come from the environment, see :func:`s3_settings_from_env`.
* ``file:///abs/path`` or a plain path -- a local directory, the embedded default so that a
  fresh machine needs no server.

A folder can be *published* atomically: readers either see a folder with every file in it and
its ``_PUBLISHED`` marker, or they do not see it as published at all. Published folders are
immutable: publishing different files to the same prefix again raises
:class:`AlreadyExistsError`; publishing the very same files again (a retry, or a concurrent
publisher of the same content) returns the existing marker. Concurrent publishers of one prefix
never mix their files: on S3 they take turns through a lease lock that heals when its holder
is gone (see :mod:`components.common.storage.lock`), on a directory the atomic rename of a
private staging folder decides.

Create-only writes (``put(..., if_absent=True)``) are idempotent: when the object already holds
exactly the bytes being written, the write succeeds. That is what makes a retried S3 request
safe: when the reply to a conditional PUT is lost, the client retries, gets ``412 Precondition
Failed`` for its own first write, and must not report that as somebody else's object. Callers
that need exactly one winner among several writers write distinct bytes (the registry puts a
nonce in every claim and event).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from components.common.storage.base import (
    PUBLISHED_MARKER,
    AlreadyExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    UnsafeKeyError,
    check_key,
    join_key,
    sha256_bytes,
)
from components.common.storage.local import LocalStore
from components.common.storage.s3 import S3Settings, S3Store, s3_settings_from_env

__all__ = [
    "PUBLISHED_MARKER", "AlreadyExistsError", "LocalStore", "ObjectInfo", "ObjectNotFoundError",
    "ObjectStore", "S3Settings", "S3Store", "StorageConfigError", "StorageError",
    "StorageUnavailableError", "UnsafeKeyError", "check_key", "join_key", "open_store",
    "read_uri", "s3_settings_from_env", "sha256_bytes", "split_uri",
]


def open_store(uri: str | os.PathLike) -> ObjectStore:
    """Opens the store rooted at ``uri``: ``s3://bucket/prefix``, ``file:///path`` or a path."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"Invalid file URI: {text!r}. Expect file:///absolute/path.")
        return LocalStore(parsed.path)
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(text)
    raise ValueError(
        f"Unsupported storage URI: {text!r}. Expect s3://bucket/prefix, file:///path or a path."
    )


def split_uri(uri: str) -> tuple[ObjectStore, str]:
    """Opens the store of a URI's parent and returns it with the last segment as key."""
    text = os.fspath(uri).rstrip("/")
    parent, _, name = text.rpartition("/")
    if not name or not parent:
        raise ValueError(f"Invalid object URI: {uri!r}. Expect s3://bucket/path/file or a path.")
    if parent in ("s3:/", "s3:"):
        raise ValueError(f"Invalid object URI: {uri!r}. Expect s3://bucket/key.")
    return open_store(parent if parent != "file://" else "/"), name


def read_uri(uri: str) -> bytes:
    """Reads one object by its full URI (``s3://b/k``, ``file:///p`` or a path)."""
    store, name = split_uri(uri)
    return store.get(name)
