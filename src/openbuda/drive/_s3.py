"""``S3BlobStore``: Drive blobs in S3-compatible storage (AWS S3, MinIO, Ceph…), extra ``s3``.

Keys are ``<prefix>/<aa>/<bb>/<sha256>``. boto3 is synchronous, so every call runs in a worker
thread (a boto3 client is thread-safe). A put first spools its chunks to a local temp file
while hashing them (the key is the hash, known only at the end), then skips the upload when the
key exists and otherwise uploads through boto3's transfer manager (multipart for big files).
Errors are mapped onto openbuda's tree: a missing key is ``NotFound``; an unreachable or
overloaded service is ``Unavailable`` (retryable); a refused or misconfigured one is
``Unavailable`` that is not retryable, with the service's own message.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import boto3
import boto3.exceptions
import boto3.s3.transfer
import boto3.session
import botocore.config
import botocore.exceptions

from openbuda.domain.errors import InvalidRequest, NotFound, OpenbudaError, Unavailable
from openbuda.drive.blobs import (
    DEFAULT_CHUNK_SIZE,
    blob_key,
    remove_stale_files,
    spooled,
    too_large,
)
from openbuda.ports import BlobInfo, BlobStore

__all__ = ["MULTIPART_BYTES", "S3BlobStore"]

T = TypeVar("T")

_MISSING: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_RETRYABLE: Final = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
    }
)
MULTIPART_BYTES: Final = 16 * 1024 * 1024
"""Content past this size is uploaded in parts of this size, several at once."""


def _mapped(error: Exception, what: str) -> OpenbudaError | None:
    """The openbuda error for a boto3/botocore ``error`` during ``what``; ``None``: not ours."""
    if isinstance(error, botocore.exceptions.ClientError):
        response: Any = error.response
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(response.get("Error", {}).get("Message", "")) or code
        details = {"code": code, "status": status}
        if code in _MISSING or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"{what}: not found", details=details)
        if code in _RETRYABLE or (isinstance(status, int) and status >= 500):
            return Unavailable(f"{what}: S3 storage is unavailable ({message})", details=details)
        return Unavailable(
            f"{what}: S3 storage refused the request ({code}: {message})",
            details=details,
            retryable=False,
        )
    if isinstance(error, boto3.exceptions.S3UploadFailedError):
        # The transfer manager wraps the service's own error: map that one.
        cause = error.__cause__ or error.__context__
        if isinstance(cause, Exception) and (mapped := _mapped(cause, what)) is not None:
            return mapped
        return Unavailable(f"{what}: S3 storage is unreachable ({error})")
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return Unavailable(
            f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or configure a profile)",
            retryable=False,
        )
    if isinstance(
        error,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.IncompleteReadError,
    ):
        return Unavailable(f"{what}: S3 storage is unreachable ({error})")
    return None


@functools.cache
def _session() -> boto3.session.Session:
    """One boto3 session per process: a client built from a fresh one parses the S3 service
    model again (about half a second), and credentials come from the process's environment."""
    return boto3.session.Session()


class S3BlobStore(BlobStore):
    """Blobs as objects ``<prefix>/<aa>/<bb>/<sha256>`` of one bucket."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        spool_dir: Path | None = None,
        multipart_bytes: int = MULTIPART_BYTES,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise InvalidRequest("an S3 blob store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.spool_dir = spool_dir or Path(tempfile.gettempdir()) / "openbuda-drive-spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_stale_files(self.spool_dir)
        self._client: Any = client or _session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=botocore.config.Config(
                retries={"mode": "standard", "max_attempts": 4},
                max_pool_connections=32,
            ),
        )
        self._transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=multipart_bytes,
            multipart_chunksize=multipart_bytes,
            max_concurrency=4,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        spool_dir: Path | None = None,
        multipart_bytes: int = MULTIPART_BYTES,
    ) -> S3BlobStore:
        """A store for ``s3://bucket/prefix`` (the prefix may be empty)."""
        if not url.startswith("s3://"):
            raise InvalidRequest(f"{url!r} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidRequest(f"{url!r} names no bucket (expected s3://bucket/prefix)")
        return cls(
            bucket,
            prefix,
            endpoint_url=endpoint_url,
            region=region,
            spool_dir=spool_dir,
            multipart_bytes=multipart_bytes,
        )

    def key_of(self, sha256: str) -> str:
        key = blob_key(sha256)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, what: str, function: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except Exception as error:
            mapped = _mapped(error, what)
            if mapped is None:
                raise
            raise mapped from error

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        async with spooled(chunks, self.spool_dir, max_bytes=max_bytes) as (info, temp):
            if not await self.exists(info.sha256):
                key = self.key_of(info.sha256)
                await self._call(
                    f"storing blob {info.sha256!r}",
                    lambda: self._client.upload_file(
                        str(temp),
                        self.bucket,
                        key,
                        ExtraArgs={"ContentType": "application/octet-stream"},
                        Config=self._transfer,
                    ),
                )
        return info

    def open(self, sha256: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncGenerator[bytes]:
        if chunk_size < 1:
            raise InvalidRequest(f"chunk_size must be positive, not {chunk_size!r}")
        blob_key(sha256)  # a malformed sha256 is refused at once, not on the first step
        return self._chunks(sha256, chunk_size)

    async def _get(self, sha256: str) -> Any:
        """The ``get_object`` response: its ``Body`` streams the content; the caller closes it."""
        key = self.key_of(sha256)
        try:
            return await self._call(
                f"reading blob {sha256!r}",
                lambda: self._client.get_object(Bucket=self.bucket, Key=key),
            )
        except NotFound:
            raise NotFound.of("blob", sha256) from None

    async def _chunks(self, sha256: str, chunk_size: int) -> AsyncGenerator[bytes]:
        body = (await self._get(sha256))["Body"]
        try:
            while True:
                chunk: bytes = await self._call(f"reading blob {sha256!r}", body.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()  # releases the connection; no thread hop, so it runs when cancelled

    async def read(self, sha256: str, *, max_bytes: int | None = None) -> bytes:
        response = await self._get(sha256)
        body = response["Body"]
        try:
            if max_bytes is not None and int(response.get("ContentLength", 0)) > max_bytes:
                raise too_large(max_bytes)
            return await self._call(f"reading blob {sha256!r}", body.read)
        finally:
            body.close()

    async def exists(self, sha256: str) -> bool:
        key = self.key_of(sha256)
        try:
            await self._call(
                f"looking up blob {sha256!r}",
                lambda: self._client.head_object(Bucket=self.bucket, Key=key),
            )
        except NotFound:
            return False
        return True

    async def delete(self, sha256: str) -> bool:
        """S3 deletes idempotently and does not say whether the key was there: ask first."""
        if not await self.exists(sha256):
            return False
        key = self.key_of(sha256)
        await self._call(
            f"deleting blob {sha256!r}",
            lambda: self._client.delete_object(Bucket=self.bucket, Key=key),
        )
        return True

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._client.close)
