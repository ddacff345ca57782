"""The local directory backend: objects as files under a folder (``file:///path`` or a path)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from components.common.storage.base import (
    PUBLISHED_MARKER,
    AlreadyExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    check_key,
)

logger = logging.getLogger(__name__)

# Names the local backend uses while it writes; never listed, never visible as objects.
_INTERNAL_NAME = re.compile(r"^\..+\.(tmp|staging)-[0-9a-f]{32}$")


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False



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
            # Key prefix once per folder, plain os calls per file: a Path per object made a
            # 100,000-object listing 2x slower (1.5-2 s instead of 0.7-0.8 s, loaded 2 cores).
            rel = Path(dirpath).relative_to(self.root).as_posix()
            head = "" if rel == "." else rel + "/"
            for name in filenames:
                if _INTERNAL_NAME.match(name):
                    continue
                st = os.stat(os.path.join(dirpath, name))
                found.append(ObjectInfo(head + name, st.st_size,
                                        f"{st.st_size}-{st.st_mtime_ns}"))
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
                    if _same_bytes(path, data):
                        logger.debug("%s already holds these bytes", self.uri_of(key))
                        return
                    raise AlreadyExistsError(
                        f"{self.uri_of(key)} already exists with different content.") from exc
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


