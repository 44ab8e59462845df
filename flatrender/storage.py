"""Object storage: the narrow port the rest of the program uses, and its minio adapter.

The orchestrator never carries video through its event loop (DESIGN §7): nodes upload and
browsers download through presigned urls; the orchestrator itself only moves small things
(project replicas, thumbnails, previews) and lets the Merger work on files in a worker thread.

Errors, for the HTTP layer and the actors:

- :class:`StorageUnavailable`: the server cannot be reached, timed out, or answered 5xx/429.
  Retry later; the HTTP layer answers 503.
- :class:`ObjectNotFound`: the key does not exist (``get_bytes``, ``download_file``).
- :class:`ObjectTooLarge`: ``download_file`` met more than its ``max_bytes``.
- :class:`StorageError`: the base class; raised as such for anything else the server refused
  (wrong credentials, missing bucket, ...), i.e. a configuration problem.

The minio client is synchronous: every call runs in a worker thread through
``trio.to_thread.run_sync`` under one :class:`trio.CapacityLimiter` (``[s3] max_threads``).
Cancelling a call waits for its thread to finish, which the short timeouts bound.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import attrs
import certifi
import trio
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from flatrender.config import MAX_PRESIGN_TTL_SEC, S3Config, s3_address

T = TypeVar("T")

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Bytes read from the server at a time when streaming an object to a file.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024


@attrs.frozen
class ObjectInfo:
    key: str
    size: int
    etag: str
    # Not included in listings: None there.
    content_type: str | None = None
    last_modified: datetime | None = None


class StorageError(Exception):
    """Object storage refused an operation."""


class StorageUnavailable(StorageError):
    """Object storage is unreachable or failing right now; the operation may be retried later."""


class ObjectNotFound(StorageError):
    """No object under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key!r}")
        self.key = key


class ObjectTooLarge(StorageError):
    """The object holds more than the caller would take; nothing is left at the target path."""

    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(f"object {key!r} holds more than {max_bytes} bytes")
        self.key = key
        self.max_bytes = max_bytes


class ObjectStore(Protocol):
    """What the program needs from object storage; keys are bucket-relative (``renders/...``)."""

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists."""

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None: ...

    async def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None: ...

    async def get_bytes(self, key: str) -> bytes:
        """The whole object; :class:`ObjectNotFound` when missing. For small objects only."""

    async def download_file(
        self, key: str, path: str | os.PathLike[str], max_bytes: int | None = None
    ) -> None:
        """Stream the object to ``path`` (replaced atomically); :class:`ObjectNotFound`, and
        :class:`ObjectTooLarge` once more than ``max_bytes`` arrived (the download stops)."""

    async def stat(self, key: str) -> ObjectInfo | None:
        """Size, etag and content type, or None when missing."""

    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error."""

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively), in key order."""

    async def presign_get(self, key: str, ttl_sec: int | None = None) -> str:
        """A GET url valid ``ttl_sec`` seconds (default: ``[s3] presign_ttl_sec``)."""

    async def presign_put(self, key: str, ttl_sec: int | None = None) -> str:
        """A PUT url valid ``ttl_sec`` seconds: the body is uploaded as the object."""


_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "XMinioServerNotInitialized",
    }
)
_ALREADY_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


def _translate(e: Exception) -> StorageError:
    """Map a minio/urllib3 error to the domain exceptions (ObjectNotFound is the caller's)."""
    status = 0
    if isinstance(e, S3Error):
        status = getattr(e.response, "status", 0) or 0
        if e.code in _UNAVAILABLE_CODES:
            return StorageUnavailable(f"object storage is failing: {e.code}: {e.message}")
    elif isinstance(e, ServerError):
        status = e.status_code
    elif isinstance(e, InvalidResponseError):
        status = int(getattr(e, "_code", 0) or 0)
    elif isinstance(e, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return StorageUnavailable(f"object storage is unreachable: {type(e).__name__}: {e}")
    if status >= 500 or status == 429:
        return StorageUnavailable(f"object storage answered HTTP {status}: {e}")
    return StorageError(str(e))


_TRANSLATED: tuple[type[Exception], ...] = (
    MinioException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


class MinioStore:
    """:class:`ObjectStore` on any S3-compatible server through the minio client.

    Timeouts are short on purpose: with minio's defaults (5 minutes, 5 retries) an outage would
    hang requests for minutes. An unreachable server fails in well under a second (connection
    refused) or after ``connect_timeout`` times two attempts (no answer at all).
    """

    def __init__(
        self,
        config: S3Config,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        retries: int = 2,
    ) -> None:
        if not config.endpoint:
            raise ValueError("[s3] endpoint is empty")
        self.bucket = config.bucket
        self.endpoint, self._secure = s3_address(config)
        self._region = config.region or "us-east-1"
        self.default_ttl_sec = config.presign_ttl_sec
        self._limiter = trio.CapacityLimiter(max(1, config.max_threads))
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # One pooled connection per thread that may use it at once.
            maxsize=max(1, config.max_threads),
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=retries,
                connect=min(retries, 1),
                read=0,  # the request may have been applied: let the caller decide
                status=retries,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
            ),
        )
        self._client = self._new_client(config)
        # Calls that failed for a reason other than a missing object (GET /metrics).
        self.errors = 0

    def _new_client(self, config: S3Config) -> Minio:
        # A fixed region: presigning then never asks the server for the bucket's location.
        return Minio(
            self.endpoint,
            access_key=config.access_key or None,
            secret_key=config.secret_key or None,
            secure=self._secure,
            region=self._region,
            http_client=self._http,
        )

    def reconfigure(self, config: S3Config) -> None:
        """Take new credentials and presign lifetime, for a reload: the store is the same object
        wherever it is held, calls already running finish with the client they started with.
        The server, bucket, region and thread count stay (see ``RESTART_ONLY`` in daemon.py)."""
        self._client = self._new_client(config)
        self.default_ttl_sec = config.presign_ttl_sec

    def __repr__(self) -> str:
        return f"MinioStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def close(self) -> None:
        """Close pooled connections (the store stays usable; it reconnects on demand)."""
        self._http.clear()

    async def _run(self, fn: Callable[[], T], key: str | None = None) -> T:
        """Run ``fn`` in a worker thread; errors become :class:`StorageError` subclasses."""
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        except _TRANSLATED as e:
            if key is not None and isinstance(e, S3Error) and e.code in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from e
            self.errors += 1
            raise _translate(e) from e

    # -- ObjectStore -------------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        await self._run(self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as e:  # created meanwhile by another process
            if e.code not in _ALREADY_EXISTS_CODES:
                raise

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        await self._run(
            functools.partial(
                self._client.put_object,
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
            )
        )

    async def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        await self._run(
            functools.partial(
                self._client.fput_object,
                self.bucket,
                key,
                os.fspath(path),
                content_type=content_type,
            )
        )

    async def get_bytes(self, key: str) -> bytes:
        return await self._run(functools.partial(self._get_bytes_sync, key), key)

    def _get_bytes_sync(self, key: str) -> bytes:
        response = self._client.get_object(self.bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    async def download_file(
        self, key: str, path: str | os.PathLike[str], max_bytes: int | None = None
    ) -> None:
        download = functools.partial(self._download_sync, key, os.fspath(path), max_bytes)
        await self._run(download, key)

    def _download_sync(self, key: str, path: str, max_bytes: int | None) -> None:
        """Chunks to ``<path>.part``, renamed once whole; memory holds one chunk. Missing parent
        folders are created (as minio's ``fget_object`` did)."""
        part = f"{path}.part"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        response = self._client.get_object(self.bucket, key)
        try:
            with open(part, "wb") as out:
                written = 0
                for chunk in response.stream(DOWNLOAD_CHUNK_BYTES):
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise ObjectTooLarge(key, max_bytes)
                    out.write(chunk)
            os.replace(part, path)
        finally:
            response.close()
            response.release_conn()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            obj = await self._run(
                functools.partial(self._client.stat_object, self.bucket, key), key
            )
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key=key,
            size=obj.size or 0,
            etag=(obj.etag or "").strip('"'),
            content_type=obj.content_type,
            last_modified=obj.last_modified,
        )

    async def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key anyway; some servers say NoSuchKey.
        with contextlib.suppress(ObjectNotFound):
            await self._run(functools.partial(self._client.remove_object, self.bucket, key), key)

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        return await self._run(functools.partial(self._list_sync, prefix))

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        return [
            ObjectInfo(
                key=obj.object_name or "",
                size=obj.size or 0,
                etag=(obj.etag or "").strip('"'),
                last_modified=obj.last_modified,
            )
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if not obj.is_dir
        ]

    # Presigning is local computation (the region is fixed): no thread needed.

    async def presign_get(self, key: str, ttl_sec: int | None = None) -> str:
        return str(self._client.presigned_get_object(self.bucket, key, expires=self._ttl(ttl_sec)))

    async def presign_put(self, key: str, ttl_sec: int | None = None) -> str:
        return str(self._client.presigned_put_object(self.bucket, key, expires=self._ttl(ttl_sec)))

    def _ttl(self, ttl_sec: int | None) -> timedelta:
        ttl = self.default_ttl_sec if ttl_sec is None else ttl_sec
        if not 1 <= ttl <= MAX_PRESIGN_TTL_SEC:
            raise ValueError(f"presigned url lifetime {ttl} s: must be 1..{MAX_PRESIGN_TTL_SEC}")
        return timedelta(seconds=ttl)
