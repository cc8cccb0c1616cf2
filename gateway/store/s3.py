"""S3/MinIO object store on the ``minio`` SDK, with timeouts and a deadline on every put."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, BinaryIO, TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE, check_bucket_name

from gateway.errors import ConfigError, ObjectNotFound, StoreError, StoreUnavailable
from gateway.store.base import CHUNK_SIZE, ExactSource, validate_name, validate_prefix

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from urllib3 import BaseHTTPResponse

T = TypeVar("T")

MiB = 1024 * 1024

# S3 error codes that mean "busy or briefly broken", not "refused": worth a retry later.
_BUSY_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
     "RequestTimeTooSkewed", "XMinioServerNotInitialized"}
)  # fmt: skip
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})

# What minio and urllib3 raise for a failed request. Anything else is a bug: it passes.
_FAILURES = (MinioException, urllib3.exceptions.HTTPError, OSError)


class S3Store:
    """Objects in one S3 bucket under their own names (``<record_key>/<digest>``).

    Every request runs with connect/read timeouts and a few retries, and each ``put``
    also has an overall deadline (``deadline`` + ``length`` / ``min_throughput``):
    ``put_object`` is known to stall when a connection drops, and a stalled put must
    become a retryable :class:`StoreUnavailable`, not a hung pipeline worker.
    Objects larger than ``part_size`` go up as multipart uploads, one part at a time.
    The SDK reads each part into memory and still holds the previous one while reading
    the next, so a put peaks at two parts (16 MiB by default) whatever the object's size.
    Reads, stats and listings are bounded by the timeouts and retries alone.

    Parameters
    ----------
    endpoint:
        ``host:port`` of the S3 service.
    bucket:
        The bucket; created by the first put if missing.
    access_key, secret_key:
        Credentials. They go to the SDK's signer and nowhere else.
    secure:
        TLS (``s3+https://``); CAs from ``SSL_CERT_FILE`` if set, else certifi's.
    region:
        None lets the SDK ask the bucket's location once.
    connect_timeout, read_timeout:
        Seconds per connection attempt and per socket read or write.
    retries:
        Extra attempts per request on connection errors and HTTP 500/502/503/504.
    deadline, min_throughput:
        A put of ``n`` bytes is abandoned after ``deadline + n / min_throughput`` s.
    check_timeout:
        Seconds :meth:`check` waits for an answer.
    part_size:
        Multipart part size, at least S3's 5 MiB minimum.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 2,
        deadline: float = 60.0,
        min_throughput: float = 1.0 * MiB,
        check_timeout: float = 5.0,
        part_size: int = 8 * MiB,
    ) -> None:
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise ConfigError(f"invalid S3 bucket name: {exc}") from exc
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        self._deadline = deadline
        self._min_throughput = min_throughput
        self._check_timeout = check_timeout
        self._part_size = part_size
        self._bucket_ready = False
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(
                total=retries,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
            ),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    def __repr__(self) -> str:
        # Endpoint and bucket only: credentials never reach a repr, a log line or an error.
        scheme = "s3+https" if self.secure else "s3"
        return f"S3Store({scheme}://{self.endpoint}/{self.bucket})"

    def put_deadline(self, length: int) -> float:
        """Seconds a put of ``length`` bytes may take before it is abandoned."""
        return self._deadline + length / self._min_throughput

    def put(self, name: str, source: BinaryIO, *, length: int, replace: bool = False) -> None:
        """Store ``length`` bytes of ``source`` under ``name`` (see ``ObjectStore``).

        The upload runs in a worker thread. If it misses its deadline the caller gets
        :class:`StoreUnavailable` at once and the source is revoked, so the abandoned
        thread cannot read from it any more; should that thread still complete, it can only
        have written the full, correct bytes under their immutable content-addressed name,
        which a retry then finds and accepts.
        """
        validate_name(name)
        guard = ExactSource(source, length)
        seconds = self.put_deadline(length)
        self._within(
            seconds,
            lambda: self._put(name, guard, length, replace=replace),
            what=f"put {name}",
            on_timeout=guard.revoke,
        )

    def _put(self, name: str, guard: ExactSource, length: int, *, replace: bool) -> None:
        self.ensure_bucket()
        existing = None if replace else self._stat_size(name)
        if existing is not None:
            if existing != length:
                raise StoreError(
                    f"{name} already holds {existing} bytes, not {length}: objects are never "
                    "overwritten"
                )
            return
        if length == 0:
            guard.finish()  # minio never calls read() for an empty object
        try:
            self._client.put_object(
                self.bucket,
                name,
                cast(BinaryIO, guard),  # minio only calls read()
                length,
                part_size=self._part_size,
                # One part in flight keeps memory per put bounded; concurrency comes from
                # the pipeline running several puts at once.
                num_parallel_uploads=1,
            )
        except _FAILURES as exc:
            if exc is guard.source_error:
                raise
            raise _translate(exc, f"put {name}") from exc

    def open(self, name: str) -> BinaryIO:
        """A streaming reader of the object; the caller closes it."""
        validate_name(name)
        try:
            response = self._client.get_object(self.bucket, name)
        except _FAILURES as exc:
            raise _translate(exc, f"open {name}") from exc
        return io.BufferedReader(_ResponseReader(response, name), CHUNK_SIZE)

    def exists(self, name: str) -> bool:
        """True when an object is stored under ``name``."""
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        """The object's length, or None when absent."""
        validate_name(name)
        return self._stat_size(name)

    def delete(self, name: str) -> None:
        """Remove the object if present (tests and repair only)."""
        validate_name(name)
        try:
            self._client.remove_object(self.bucket, name)
        except _FAILURES as exc:
            error = _translate(exc, f"delete {name}")
            if not isinstance(error, ObjectNotFound):
                raise error from exc

    def names(self, prefix: str = "") -> Iterator[str]:
        """Stored names starting with ``prefix``, in S3's (lexicographic) order."""
        validate_prefix(prefix)
        try:
            for item in self._client.list_objects(
                self.bucket, prefix=prefix or None, recursive=True
            ):
                name = item.object_name
                # Foreign keys in a shared bucket are not ours to hand out.
                if name is not None and _is_name(name):
                    yield name
        except _FAILURES as exc:
            error = _translate(exc, f"list {self.bucket}")
            if not isinstance(error, ObjectNotFound):  # no bucket yet: nothing stored
                raise error from exc

    def check(self) -> None:
        """Raise unless the endpoint answers within ``check_timeout`` and lets us in."""
        self._within(
            self._check_timeout,
            self._probe,
            what=f"check {self.endpoint}",
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (once per store object)."""
        if self._bucket_ready:
            return
        try:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    # Another gateway process made it between our check and our create.
                    if exc.code != "BucketAlreadyOwnedByYou":
                        raise
        except _FAILURES as exc:
            raise _translate(exc, f"create bucket {self.bucket}") from exc
        self._bucket_ready = True

    def _probe(self) -> None:
        try:
            self._client.bucket_exists(self.bucket)
        except _FAILURES as exc:
            raise _translate(exc, f"check {self.endpoint}") from exc

    def _stat_size(self, name: str) -> int | None:
        try:
            stat = self._client.stat_object(self.bucket, name)
        except _FAILURES as exc:
            error = _translate(exc, f"stat {name}")
            if isinstance(error, ObjectNotFound):
                return None
            raise error from exc
        return stat.size

    def _within(
        self,
        seconds: float,
        work: Callable[[], T],
        *,
        what: str,
        on_timeout: Callable[[], None] | None = None,
    ) -> T:
        """Run ``work`` in a daemon thread; raise StoreUnavailable after ``seconds``."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)

        # A daemon thread, not an executor: an abandoned, stalled upload must neither
        # block the next put nor keep the interpreter from exiting.
        threading.Thread(target=run, name=f"s3-{what[:40]}", daemon=True).start()
        try:
            return future.result(timeout=seconds)
        except FutureTimeout:
            if on_timeout is not None:
                on_timeout()
            if future.done():  # it finished while we gave up: take its answer
                return future.result()
            raise StoreUnavailable(
                f"{what}: no answer from {self.endpoint} within {seconds:.1f} s"
            ) from None


class _ResponseReader(io.RawIOBase):
    """An object's HTTP body as a raw stream; closing it returns the connection."""

    def __init__(self, response: BaseHTTPResponse, name: str) -> None:
        self._response = response
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._response.read(len(view))
        except _FAILURES as exc:
            raise _translate(exc, f"read {self._name}") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


def _is_name(name: str) -> bool:
    try:
        validate_name(name)
    except ValueError:
        return False
    return True


def _translate(exc: Exception, what: str) -> StoreError:
    """The gateway's error for a minio/urllib3 failure (one of ``_FAILURES``)."""
    if isinstance(exc, S3Error):
        if exc.code in _MISSING_CODES:
            return ObjectNotFound(f"{what}: {exc.code}")
        if exc.code in _BUSY_CODES:
            return StoreUnavailable(f"{what}: S3 {exc.code}: {exc.message}")
        hint = ""
        if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            hint = " (check GATEWAY_S3_ACCESS_KEY / GATEWAY_S3_SECRET_KEY and the policy)"
        return StoreError(f"{what}: S3 {exc.code}: {exc.message}{hint}")
    if isinstance(exc, ServerError):
        kind = StoreUnavailable if exc.status_code >= 500 else StoreError
        return kind(f"{what}: HTTP {exc.status_code} from the S3 endpoint")
    if isinstance(exc, InvalidResponseError):
        # A proxy's HTML error page: 5xx means the service behind it is down.
        status = int(getattr(exc, "_code", 0) or 0)
        kind = StoreUnavailable if status >= 500 else StoreError
        return kind(f"{what}: non-S3 answer (HTTP {status}) from the endpoint")
    if isinstance(exc, MinioException):
        return StoreError(f"{what}: {exc}")
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(
        exc.reason, urllib3.exceptions.SSLError
    ):
        return StoreError(f"{what}: TLS handshake failed: {exc.reason}")
    if isinstance(exc, urllib3.exceptions.SSLError):
        return StoreError(f"{what}: TLS failure: {exc}")
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    return StoreUnavailable(f"{what}: S3 endpoint unreachable: {type(reason).__name__}")
