"""The object store interface: keys, errors, object facts and what every backend shares
(publishing a folder, reading it back). The backends are :mod:`.local` and :mod:`.s3`;
:mod:`components.common.storage` opens one by URI."""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from components.common.errors import MlopsError

logger = logging.getLogger(__name__)

PUBLISHED_MARKER = "_PUBLISHED"

# The S3 publish lock of a folder: <prefix>/_PUBLISHING-<generation>.
_LOCK_NAME = "_PUBLISHING"


class StorageError(MlopsError):
    """Base class of the storage layer's errors (exit code 1: a storage failure, whatever
    the builtin class a subclass also derives from)."""


class UnsafeKeyError(StorageError, ValueError):
    """A key that is empty, absolute, or tries to leave the store's root (``..``); at a
    serving edge the caller's mistake (HTTP 400)."""

    http_status = 400


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The key names no object in the store."""


class AlreadyExistsError(StorageError, FileExistsError):
    """A write-once object or a published folder already exists with different content."""


class StorageConfigError(StorageError, ValueError):
    """The storage settings are missing or invalid; the message names the variables to set."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The storage server did not answer in time or dropped the connection; names the endpoint."""


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
            if_absent: Create-only: fail with :class:`AlreadyExistsError` if an object with
                different bytes exists. An object with exactly these bytes is success (an
                idempotent retry), never an error.
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
        what they download. Publishing is idempotent: if the folder is already published with
        exactly these files (a retry, or another process publishing the same content at the
        same time), the existing marker is returned. Concurrent publishers of one prefix never
        overwrite each other's files; on S3 a later one waits for the earlier one to finish.

        Args:
            prefix: Folder key, relative to the store root.
            files: Relative file name -> content.

        Returns:
            The marker's content.

        Raises:
            AlreadyExistsError: The folder was already published with different files;
                published folders are immutable.
        """
        check_key(prefix)
        if not files:
            raise ValueError(f"Nothing to publish at {prefix!r}: expect at least one file.")
        for name in files:
            check_key(name)
            if name == PUBLISHED_MARKER or name.startswith(_LOCK_NAME):
                raise UnsafeKeyError(f"{name!r} is reserved for the publish marker and lock.")
        marker = {
            "files": {
                name: {"size": len(data), "sha256": sha256_bytes(data)}
                for name, data in sorted(files.items())
            }
        }
        existing = self.published_marker(prefix)
        if existing is not None:
            return self._same_or_raise(prefix, existing, marker)
        try:
            self._publish_files(prefix, files,
                                json.dumps(marker, indent=2, sort_keys=True).encode())
        except AlreadyExistsError:
            existing = self.published_marker(prefix)
            if existing is None:
                raise
            return self._same_or_raise(prefix, existing, marker)
        logger.info("Published %d files at %s", len(files), self.uri_of(prefix))
        return marker

    def published_marker(self, prefix: str) -> dict | None:
        """The marker of a published folder (its files' sizes and sha256), or None."""
        try:
            return json.loads(self.get(join_key(check_key(prefix), PUBLISHED_MARKER)))
        except ObjectNotFoundError:
            return None

    def _same_or_raise(self, prefix: str, existing: dict, marker: dict) -> dict:
        if existing.get("files") == marker["files"]:
            logger.info("%s is already published with the same files; nothing to do",
                        self.uri_of(prefix))
            return existing
        differ = sorted(set(existing.get("files", {})) ^ set(marker["files"]) | {
            n for n in set(existing.get("files", {})) & set(marker["files"])
            if existing["files"][n] != marker["files"][n]})
        raise AlreadyExistsError(
            f"{self.uri_of(prefix)} is already published with different files "
            f"({', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''} differ) and "
            "published folders are immutable; publish a new version instead.")

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


