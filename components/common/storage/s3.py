"""The S3 backend: any S3-compatible server through the ``minio`` client (MinIO, SeaweedFS,
AWS S3, Ceph RGW ...), with bounded timeouts; publishers of one folder take turns through a
:class:`~components.common.storage.lock.LeaseLock`."""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from components.common.storage.base import (
    _LOCK_NAME,
    PUBLISHED_MARKER,
    AlreadyExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    check_key,
    join_key,
)
from components.common.storage.lock import LeaseLock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 server is, how to sign requests, and how long to wait for it.

    A request waits at most ``connect_timeout`` for the connection and ``read_timeout`` for
    each read of the answer, and is tried ``1 + retries`` times, so an endpoint that never
    answers fails a request after about ``(connect_timeout + read_timeout) * (1 + retries)``
    seconds (plus a few seconds of back-off) with :class:`StorageUnavailableError`.
    """

    endpoint: str  # host[:port]
    secure: bool
    access_key: str | None
    secret_key: str | None
    region: str | None
    verify_tls: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 2

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "S3_ENDPOINT",
                  "MINIO_ENDPOINT")
_ACCESS_VARS = ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")
_TIMEOUT_VARS = {"connect_timeout": ("MLOPS_S3_CONNECT_TIMEOUT", 5.0),
                 "read_timeout": ("MLOPS_S3_READ_TIMEOUT", 30.0)}
_RETRIES_VAR = ("MLOPS_S3_RETRIES", 2)


def _first_env(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _number_env(env: Mapping[str, str], name: str, default: float, *, integer: bool = False,
                minimum: float = 0.0):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (not integer and value == 0):
        kind = "an integer >= 0" if integer else "a number of seconds > 0"
        raise StorageConfigError(f"Invalid {name}: {raw!r}. Expect {kind}.")
    return value


def s3_settings_from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """Reads the S3 endpoint, credentials and timeouts from the conventional variables.

    Endpoint: the first of ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``S3_ENDPOINT_URL``,
    ``S3_ENDPOINT``, ``MINIO_ENDPOINT`` (``http://host:port``, ``https://host`` or ``host:port``).
    There is no default: AWS S3 is used only when asked for explicitly
    (``AWS_ENDPOINT_URL=https://s3.amazonaws.com``), so that a machine without a configured
    endpoint fails with a clear message instead of trying the internet.
    TLS: the URL's scheme, else ``S3_USE_HTTPS`` / ``MINIO_SECURE`` (default on);
    ``S3_VERIFY_SSL=0`` turns certificate checks off (KServe's annotation names).
    Credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or MinIO's
    ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY`` (``MINIO_ROOT_USER`` / ``MINIO_ROOT_PASSWORD``).
    Region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION``.
    Timeouts: ``MLOPS_S3_CONNECT_TIMEOUT`` (seconds, default 5), ``MLOPS_S3_READ_TIMEOUT``
    (seconds, default 30), ``MLOPS_S3_RETRIES`` (default 2).

    Raises:
        StorageConfigError: No endpoint is set, or a value is invalid.
    """
    env = os.environ if env is None else env
    raw = _first_env(_ENDPOINT_VARS, env)
    if not raw:
        raise StorageConfigError(
            "No S3 endpoint is configured for an s3:// URI. Set AWS_ENDPOINT_URL (or "
            "AWS_ENDPOINT_URL_S3, S3_ENDPOINT_URL, S3_ENDPOINT, MINIO_ENDPOINT) to the server, "
            "e.g. http://minio-service.kubeflow:9000, and AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY to its keys; for AWS S3 itself set "
            "AWS_ENDPOINT_URL=https://s3.amazonaws.com. Or use a local path instead.")
    secure_default = _truthy(env.get("S3_USE_HTTPS", env.get("MINIO_SECURE")), True)
    if "://" in raw:
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StorageConfigError(
                f"Invalid S3 endpoint: {raw!r}. Expect http://host:port, https://host or host:port."
            )
        endpoint, secure = parsed.netloc, parsed.scheme == "https"
    else:
        endpoint, secure = raw.rstrip("/"), secure_default
    timeouts = {field: _number_env(env, name, default)
                for field, (name, default) in _TIMEOUT_VARS.items()}
    return S3Settings(
        endpoint=endpoint,
        secure=secure,
        access_key=_first_env(_ACCESS_VARS, env),
        secret_key=_first_env(_SECRET_VARS, env),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        verify_tls=_truthy(env.get("S3_VERIFY_SSL"), True),
        retries=_number_env(env, _RETRIES_VAR[0], _RETRIES_VAR[1], integer=True),
        **timeouts,
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
            settings = settings or s3_settings_from_env()
            client = _make_minio_client(settings)
        self.settings = settings
        self.client = client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    def _unavailable(self, what: str, key: str, exc: Exception) -> StorageUnavailableError:
        reason = getattr(exc, "reason", None) or exc
        s = self.settings
        if s is not None:  # also when a response's body stopped coming, after the pool saw it
            _endpoint(s.url).mark_down()
        limits = (f" (connect timeout {s.connect_timeout:g} s, read timeout "
                  f"{s.read_timeout:g} s, {s.retries} retries)") if s else ""
        endpoint = s.url if s else "the S3 endpoint"
        return StorageUnavailableError(
            f"S3 endpoint {endpoint} did not answer {what} {self.uri_of(key)}{limits}: "
            f"{reason}. Check that the endpoint (AWS_ENDPOINT_URL) is right and reachable; "
            "the limits are set with MLOPS_S3_CONNECT_TIMEOUT, MLOPS_S3_READ_TIMEOUT and "
            "MLOPS_S3_RETRIES.")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        import urllib3

        base = join_key(self.prefix, prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        try:
            for obj in self.client.list_objects(self.bucket,
                                                prefix=(base + "/") if base else None,
                                                recursive=True):
                if obj.is_dir:
                    continue
                found.append(ObjectInfo(obj.object_name[strip:], obj.size or 0,
                                        (obj.etag or "").strip('"')))
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable("a listing of", prefix, exc) from exc
        yield from sorted(found, key=lambda o: o.key)

    def get(self, key: str) -> bytes:
        import urllib3
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectNotFoundError(f"No object {self.uri_of(key)}") from exc
            raise StorageError(f"Cannot read {self.uri_of(key)}: {exc.code}: {exc.message}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable("a read of", key, exc) from exc

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        import urllib3
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
                # Either somebody else's object, or our own: the client retries a PUT whose
                # reply was lost, and the retry finds what the first attempt wrote.
                try:
                    same = self.get(key) == data
                except ObjectNotFoundError:
                    same = False
                if same:
                    logger.debug("%s already holds these bytes (a retried or identical write)",
                                 self.uri_of(key))
                    return
                raise AlreadyExistsError(
                    f"{self.uri_of(key)} already exists with different content.") from exc
            raise StorageError(f"Cannot write {self.uri_of(key)}: {exc.code}: {exc.message}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable("a write of", key, exc) from exc

    def exists(self, key: str) -> bool:
        import urllib3
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"):
                return False
            raise StorageError(f"Cannot stat {self.uri_of(key)}: {exc.code}: {exc.message}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable("a stat of", key, exc) from exc

    def delete(self, key: str) -> None:
        import urllib3

        try:
            self.client.remove_object(self.bucket, self._key(key))
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable("a delete of", key, exc) from exc

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join_key(self.prefix, check_key(prefix)), client=self.client,
                       settings=self.settings)

    def _publish_files(self, prefix: str, files: Mapping[str, bytes], marker: bytes) -> None:
        # S3 has no rename: upload every file, then the marker last, written only if absent.
        # Readers go by the marker, so until it lands the folder does not exist for them.
        # Publishers of one prefix take turns through a lock, so one never overwrites the files
        # of a folder another is writing; a crashed publisher's unmarked files are overwritten
        # by the next one once its lock is found dead or stale.
        marker_key = join_key(prefix, PUBLISHED_MARKER)
        lock = LeaseLock(self, join_key(prefix, _LOCK_NAME), what=f"publishing "
                         f"{self.uri_of(prefix)}", done=lambda: self.exists(marker_key))
        with lock as held:
            if not held:
                raise AlreadyExistsError(f"{self.uri_of(prefix)} was published while this "
                                         "publisher waited for its turn.")
            if self.exists(marker_key):
                raise AlreadyExistsError(f"{self.uri_of(prefix)} is already published.")
            for name, data in files.items():
                lock.check()
                self.put(join_key(prefix, name), data)
            lock.check()
            self.put(marker_key, marker, if_absent=True)

    def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist (for tests, demos and first runs)."""
        import urllib3

        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable("a bucket check of", "", exc) from exc


class _Endpoint:
    """What this process knows of one S3 endpoint: did its last request get an answer?

    While an endpoint is down (a request of this process used up its retries without an
    answer), every request to it is tried once, not ``1 + retries`` times: requests that are
    already waiting stop after their current try, and the ones that follow (cleaning up,
    reporting) fail after one timeout each instead of adding up a whole bound each. The
    first answer marks it up again, so a retry after the store's return runs normally.
    """

    def __init__(self, url: str):
        self.url = url
        self.down = False
        self._guard = threading.Lock()

    def mark_down(self) -> None:
        with self._guard:
            was, self.down = self.down, True
        if not was:
            logger.warning("S3 endpoint %s did not answer; until it does, each request to it "
                           "is tried once", self.url)

    def mark_up(self) -> None:
        with self._guard:
            was, self.down = self.down, False
        if was:
            logger.info("S3 endpoint %s answers again", self.url)


_ENDPOINTS: dict[str, _Endpoint] = {}
_ENDPOINTS_GUARD = threading.Lock()


def _endpoint(url: str) -> _Endpoint:
    with _ENDPOINTS_GUARD:
        return _ENDPOINTS.setdefault(url, _Endpoint(url))


@functools.cache
def _http_classes():
    """urllib3's retry and pool, told of the endpoint's state (urllib3 imported on first use)."""
    import urllib3

    class EndpointRetry(urllib3.Retry):
        endpoint: _Endpoint | None = None

        def new(self, **kw):
            retry = super().new(**kw)
            retry.endpoint = self.endpoint
            return retry

        def is_exhausted(self) -> bool:
            return super().is_exhausted() or bool(self.endpoint and self.endpoint.down)

    class EndpointPool(urllib3.PoolManager):
        endpoint: _Endpoint | None = None

        def urlopen(self, method, url, redirect=True, **kw):
            try:
                response = super().urlopen(method, url, redirect=redirect, **kw)
            except urllib3.exceptions.HTTPError:
                self.endpoint.mark_down()
                raise
            self.endpoint.mark_up()
            return response

    return EndpointRetry, EndpointPool


def _make_minio_client(settings: S3Settings):
    import urllib3
    from minio import Minio

    # minio's own default waits 300 s to connect and per read, with 5 retries: a partition
    # hangs a step for many minutes. Bounded, configurable limits instead (see S3Settings).
    retry_class, pool_class = _http_classes()
    endpoint = _endpoint(settings.url)
    retries = retry_class(total=settings.retries, backoff_factor=0.2,
                          status_forcelist=[500, 502, 503, 504])
    retries.endpoint = endpoint
    http_client = pool_class(
        timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
        maxsize=10,
        cert_reqs="CERT_REQUIRED" if (settings.verify_tls or not settings.secure) else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or _certifi_where(),
        retries=retries,
    )
    http_client.endpoint = endpoint
    return Minio(settings.endpoint, access_key=settings.access_key,
                 secret_key=settings.secret_key, secure=settings.secure,
                 region=settings.region, http_client=http_client)


def _certifi_where() -> str | None:
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()

