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
immutable: publishing to the same prefix again raises :class:`AlreadyExistsError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

PUBLISHED_MARKER = "_PUBLISHED"

# Names the local backend uses while it writes; never listed, never visible as objects.
_INTERNAL_NAME = re.compile(r"^\..+\.(tmp|staging)-[0-9a-f]{32}$")


class StorageError(Exception):
    """Base class of the storage layer's errors."""


class UnsafeKeyError(StorageError, ValueError):
    """A key that is empty, absolute, or tries to leave the store's root (``..``)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The key names no object in the store."""


class AlreadyExistsError(StorageError, FileExistsError):
    """A write-once object or a published folder already exists."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing returns it.

    Attributes:
        key: The key relative to the store root. Listings return keys as the backend holds
            them, unchecked, so that callers can report unsafe ones instead of losing them.
        size: Size in bytes.
        fingerprint: Changes whenever the content changes: the ETag on S3, size and
            modification time on the local backend.
    """

    key: str
    size: int
    fingerprint: str


def check_key(key: str) -> str:
    """Returns ``key`` if it is a safe relative key, else raises :class:`UnsafeKeyError`.

    A safe key is non-empty, relative, uses ``/`` separators and has no ``.``, ``..`` or empty
    segment, so it can never address anything outside the store's root.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"Invalid object key: {key!r}. Expect a non-empty relative key.")
    if "\\" in key or "\x00" in key:
        raise UnsafeKeyError(
            f"Invalid object key: {key!r}. Expect '/' as the only separator and no NUL bytes."
        )
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise UnsafeKeyError(
            f"Invalid object key: {key!r}. Expect a relative key without '.', '..' or empty "
            "segments; keys may not leave the store's root."
        )
    return key


def join_key(*parts: str) -> str:
    """Joins key segments with ``/``, ignoring empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(ABC):
    """A flat namespace of objects under a root URI."""

    uri: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yields every object under ``prefix`` (recursively), sorted by key."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Returns the object's bytes; raises :class:`ObjectNotFoundError` if absent."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Writes an object atomically: readers see the old or the new bytes, never a part.

        Args:
            key: Relative key.
            data: The content.
            if_absent: Fail with :class:`AlreadyExistsError` instead of overwriting.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if an object with exactly this key exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Deletes one object; deleting an absent object is not an error."""

    @abstractmethod
    def child(self, prefix: str) -> ObjectStore:
        """A store rooted at ``prefix`` inside this one."""

    @abstractmethod
    def _publish_files(self, prefix: str, files: Mapping[str, bytes], marker: bytes) -> None:
        """Backend part of :meth:`publish`."""

    def get_text(self, key: str) -> str:
        return self.get(key).decode("utf-8")

    def get_json(self, key: str):
        return json.loads(self.get(key))

    def put_json(self, key: str, value, *, if_absent: bool = False) -> None:
        self.put(key, json.dumps(value, indent=2, sort_keys=True).encode(), if_absent=if_absent)

    def is_published(self, prefix: str) -> bool:
        """True if ``prefix`` is a completely published folder."""
        return self.exists(join_key(check_key(prefix), PUBLISHED_MARKER))

    def publish(self, prefix: str, files: Mapping[str, bytes]) -> dict:
        """Publishes a folder of files atomically and immutably.

        Readers that check :meth:`is_published` (or read the marker) never see a half-written
        folder. The marker records every file's size and sha256 so that readers can verify
        what they download.

        Args:
            prefix: Folder key, relative to the store root.
            files: Relative file name -> content.

        Returns:
            The marker's content.

        Raises:
            AlreadyExistsError: The folder was already published; published folders are
                immutable.
        """
        check_key(prefix)
        if not files:
            raise ValueError(f"Nothing to publish at {prefix!r}: expect at least one file.")
        for name in files:
            check_key(name)
            if name == PUBLISHED_MARKER:
                raise UnsafeKeyError(f"{PUBLISHED_MARKER!r} is reserved for the publish marker.")
        if self.is_published(prefix):
            raise AlreadyExistsError(
                f"{self.uri_of(prefix)} is already published and published folders are "
                "immutable; publish a new version instead."
            )
        marker = {
            "files": {
                name: {"size": len(data), "sha256": sha256_bytes(data)}
                for name, data in sorted(files.items())
            }
        }
        self._publish_files(prefix, files, json.dumps(marker, indent=2, sort_keys=True).encode())
        logger.info("Published %d files at %s", len(files), self.uri_of(prefix))
        return marker

    def read_published(self, prefix: str, name: str) -> bytes:
        """Reads one file of a published folder and verifies it against the marker.

        Raises:
            ObjectNotFoundError: The folder is not (completely) published.
            StorageError: The file's checksum does not match the marker (it was tampered
                with or corrupted after publishing).
        """
        try:
            marker = json.loads(self.get(join_key(prefix, PUBLISHED_MARKER)))
        except ObjectNotFoundError as exc:
            raise ObjectNotFoundError(f"{self.uri_of(prefix)} is not a published folder.") from exc
        if name not in marker["files"]:
            raise ObjectNotFoundError(f"{self.uri_of(prefix)} has no file {name!r}.")
        data = self.get(join_key(prefix, name))
        if sha256_bytes(data) != marker["files"][name]["sha256"]:
            raise StorageError(
                f"Checksum mismatch for {self.uri_of(join_key(prefix, name))}: the file changed "
                "after it was published. Do not use it; republish from the source."
            )
        return data

    def uri_of(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key if key else self.uri


# --------------------------------------------------------------------------------------------
# Local directory backend
# --------------------------------------------------------------------------------------------


class LocalStore(ObjectStore):
    """Objects as files under a local directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not _INTERNAL_NAME.match(d)]
            for name in filenames:
                if _INTERNAL_NAME.match(name):
                    continue
                path = Path(dirpath, name)
                st = path.stat()
                key = path.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}"))
        yield from sorted(found, key=lambda o: o.key)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"No object {self.uri_of(key)}") from exc

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        try:
            if if_absent:
                # link() fails if the target exists: an atomic create-if-absent.
                try:
                    os.link(tmp, path)
                except FileExistsError as exc:
                    raise AlreadyExistsError(f"{self.uri_of(key)} already exists.") from exc
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def _publish_files(self, prefix: str, files: Mapping[str, bytes], marker: bytes) -> None:
        final = self._path(prefix)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".{final.name}.staging-{uuid.uuid4().hex}")
        try:
            for name, data in files.items():
                path = staging.joinpath(*name.split("/"))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            (staging / PUBLISHED_MARKER).write_bytes(marker)
            try:
                # rename() of a directory onto a missing path is atomic; onto an existing
                # non-empty directory it fails, which keeps published folders immutable.
                os.rename(staging, final)
            except OSError as exc:
                if final.exists():
                    raise AlreadyExistsError(
                        f"{self.uri_of(prefix)} already exists; published folders are immutable."
                    ) from exc
                raise
        finally:
            if staging.exists():
                shutil.rmtree(staging)


# --------------------------------------------------------------------------------------------
# S3 backend (minio client; any S3-compatible server)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # host[:port]
    secure: bool
    access_key: str | None
    secret_key: str | None
    region: str | None
    verify_tls: bool = True


_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "S3_ENDPOINT",
                  "MINIO_ENDPOINT")
_ACCESS_VARS = ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")


def _first_env(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def s3_settings_from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """Reads the S3 endpoint and credentials from the conventional variables.

    Endpoint: the first of ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``S3_ENDPOINT_URL``,
    ``S3_ENDPOINT``, ``MINIO_ENDPOINT`` (``http://host:port``, ``https://host`` or ``host:port``),
    else AWS S3. TLS: the URL's scheme, else ``S3_USE_HTTPS`` / ``MINIO_SECURE`` (default on);
    ``S3_VERIFY_SSL=0`` turns certificate checks off (KServe's annotation names).
    Credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or MinIO's
    ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY`` (``MINIO_ROOT_USER`` / ``MINIO_ROOT_PASSWORD``).
    Region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION``.
    """
    env = os.environ if env is None else env
    raw = _first_env(_ENDPOINT_VARS, env) or "https://s3.amazonaws.com"
    secure_default = _truthy(env.get("S3_USE_HTTPS", env.get("MINIO_SECURE")), True)
    if "://" in raw:
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"Invalid S3 endpoint: {raw!r}. Expect http://host:port, https://host or host:port."
            )
        endpoint, secure = parsed.netloc, parsed.scheme == "https"
    else:
        endpoint, secure = raw.rstrip("/"), secure_default
    return S3Settings(
        endpoint=endpoint,
        secure=secure,
        access_key=_first_env(_ACCESS_VARS, env),
        secret_key=_first_env(_SECRET_VARS, env),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        verify_tls=_truthy(env.get("S3_VERIFY_SSL"), True),
    )


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` on any S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None,
                 settings: S3Settings | None = None):
        if not bucket:
            raise ValueError("Invalid S3 URI: no bucket. Expect s3://bucket/prefix.")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        if client is None:
            client = _make_minio_client(settings or s3_settings_from_env())
        self.client = client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = join_key(self.prefix, prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        for obj in self.client.list_objects(self.bucket, prefix=(base + "/") if base else None,
                                            recursive=True):
            if obj.is_dir:
                continue
            found.append(ObjectInfo(obj.object_name[strip:], obj.size or 0,
                                    (obj.etag or "").strip('"')))
        yield from sorted(found, key=lambda o: o.key)

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectNotFoundError(f"No object {self.uri_of(key)}") from exc
            raise StorageError(f"Cannot read {self.uri_of(key)}: {exc.code}: {exc.message}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        from minio.error import S3Error

        try:
            if if_absent:
                # S3 conditional write (If-None-Match: *): the server creates the object only
                # if it is absent, so two writers can never both win. minio's public
                # put_object() turns unknown headers into user metadata, hence _put_object.
                self.client._put_object(self.bucket, self._key(key), data,
                                        headers={"If-None-Match": "*"})
            else:
                self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))
        except S3Error as exc:
            if exc.code == "PreconditionFailed":
                raise AlreadyExistsError(f"{self.uri_of(key)} already exists.") from exc
            raise StorageError(f"Cannot write {self.uri_of(key)}: {exc.code}: {exc.message}") from exc

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"):
                return False
            raise StorageError(f"Cannot stat {self.uri_of(key)}: {exc.code}: {exc.message}") from exc

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._key(key))

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join_key(self.prefix, check_key(prefix)), client=self.client)

    def _publish_files(self, prefix: str, files: Mapping[str, bytes], marker: bytes) -> None:
        # S3 has no rename: upload every file, then the marker last, written only if absent.
        # Readers go by the marker, so until it lands the folder does not exist for them;
        # a crash leaves unmarked files that a retry overwrites.
        for name, data in files.items():
            self.put(join_key(prefix, name), data)
        self.put(join_key(prefix, PUBLISHED_MARKER), marker, if_absent=True)

    def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist (for tests, demos and first runs)."""
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)


def _make_minio_client(settings: S3Settings):
    from minio import Minio

    http_client = None
    if settings.secure and not settings.verify_tls:
        import urllib3

        http_client = urllib3.PoolManager(cert_reqs="CERT_NONE")
    return Minio(settings.endpoint, access_key=settings.access_key,
                 secret_key=settings.secret_key, secure=settings.secure,
                 region=settings.region, http_client=http_client)


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
