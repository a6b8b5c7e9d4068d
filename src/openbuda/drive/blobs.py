"""Drive's blob stores: content addressed by its sha256 (the ``BlobStore`` port).

Two adapters: ``LocalBlobStore`` keeps blobs in a directory (the default, under
``$OPENBUDA_HOME/drive``) and ``S3BlobStore`` (``openbuda.drive._s3``, extra ``s3``) in
S3-compatible storage. ``open_blob_store`` picks one from ``Settings.drive_blobs``.

Both stream: ``spooled`` hashes and writes a put's chunks to a temporary file in worker threads,
so a whole file is never held in memory, and the content becomes visible under its hash only
once it is complete. Every sha256 a caller passes goes through ``check_sha256`` before it is
turned into a path or a key, so junk can never name a file outside the store.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Final

import anyio
import anyio.to_thread

from openbuda.domain.errors import InvalidRequest, NotFound, TooLarge, Unavailable
from openbuda.ports import BlobInfo, BlobStore
from openbuda.settings import Settings

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "STALE_TEMP_SECONDS",
    "TEMP_SUFFIX",
    "LocalBlobStore",
    "blob_key",
    "check_sha256",
    "open_blob_store",
    "remove_stale_files",
    "spooled",
    "too_large",
]

DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
_WRITE_BATCH_BYTES: Final = 1024 * 1024
"""Chunks are written (and hashed) in batches of about this size: one thread hop per batch
rather than per chunk, which matters when a caller streams many small chunks."""
_READ_BATCH_BYTES: Final = 1024 * 1024
STALE_TEMP_SECONDS: Final = 3600.0
"""Temp files older than this are a dead writer's leftovers; younger ones may be another
process's put in progress, so they are left alone."""
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
TEMP_SUFFIX: Final = ".part"


def check_sha256(sha256: str) -> str:
    """``sha256`` when it is 64 lower-case hex digits; ``InvalidRequest`` otherwise."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):  # pyright: ignore[reportUnnecessaryIsInstance]
        shown = repr(sha256)[:80]
        raise InvalidRequest(
            f"{shown} is not a sha256 (64 lower-case hex digits)", details={"sha256": shown}
        )
    return sha256


def blob_key(sha256: str) -> str:
    """``aa/bb/<sha256>``: two levels of 256 folders keep any one folder small."""
    check_sha256(sha256)
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"the content is larger than the limit of {max_bytes} bytes",
        details={"max_bytes": max_bytes},
    )


def _check_chunk_size(chunk_size: int) -> int:
    if chunk_size < 1:
        raise InvalidRequest(f"chunk_size must be positive, not {chunk_size!r}")
    return chunk_size


def _write_batch(file: IO[bytes], digest: hashlib._Hash, batch: list[bytes]) -> None:
    for chunk in batch:
        digest.update(chunk)  # releases the GIL for large chunks
        file.write(chunk)


async def _spool(
    chunks: AsyncIterable[bytes], file: IO[bytes], *, max_bytes: int | None
) -> BlobInfo:
    digest = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    batch_bytes = 0
    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise too_large(max_bytes)
        batch.append(chunk)
        batch_bytes += len(chunk)
        if batch_bytes >= _WRITE_BATCH_BYTES:
            await anyio.to_thread.run_sync(_write_batch, file, digest, batch)
            batch, batch_bytes = [], 0
    if batch:
        await anyio.to_thread.run_sync(_write_batch, file, digest, batch)

    def finish() -> None:
        file.flush()
        os.fsync(file.fileno())

    await anyio.to_thread.run_sync(finish)
    return BlobInfo(sha256=digest.hexdigest(), size=size)


@asynccontextmanager
async def spooled(
    chunks: AsyncIterable[bytes], folder: Path, *, max_bytes: int | None
) -> AsyncGenerator[tuple[BlobInfo, Path]]:
    """The content of ``chunks`` in a complete, fsynced temp file in ``folder``, and its hash.

    Chunks are hashed and written in worker threads, a batch of about 1 MiB per hop, so a whole
    file is never in memory. ``TooLarge`` as soon as the content passes ``max_bytes``. The
    temp file is removed on leaving, whatever happens (a caller that published it linked or
    uploaded it first); a process killed meanwhile leaves it for ``remove_stale_files``.
    """
    descriptor, name = await anyio.to_thread.run_sync(
        lambda: tempfile.mkstemp(dir=folder, suffix=TEMP_SUFFIX)
    )
    temp = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            info = await _spool(chunks, file, max_bytes=max_bytes)
        yield info, temp
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: temp.unlink(missing_ok=True))


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_stale_files(folder: Path, *, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Remove the ``*.part`` files in ``folder`` last written over ``older_than`` seconds ago.

    They are what writers killed half-way left; younger ones may be another process's put in
    progress. Returns how many went.
    """
    removed = 0
    cutoff = time.time() - older_than
    for entry in os.scandir(folder):
        try:
            if (
                entry.name.endswith(TEMP_SUFFIX)
                and entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_mtime < cutoff
            ):
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # another process cleaned it up first
            continue
    return removed


def _read_batch(file: IO[bytes], chunk_size: int, count: int) -> list[bytes]:
    batch: list[bytes] = []
    for _ in range(count):
        chunk = file.read(chunk_size)
        if not chunk:
            break
        batch.append(chunk)
    return batch


class LocalBlobStore(BlobStore):
    """Blobs as read-only files ``<root>/<aa>/<bb>/<sha256>``; puts in progress in ``<root>/tmp``.

    A put writes a temp file on the same filesystem, fsyncs it and links it under its hash
    (``os.link`` refuses to replace, so identical content racing in is stored once), then
    fsyncs the folder: a writer killed at any point leaves at most a temp file. Creating the
    store (at startup) removes temp files older than an hour.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / "tmp"
        if not root.exists():
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.temp_dir.mkdir(exist_ok=True)
        self.remove_stale_temp_files()

    def path_of(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def remove_stale_temp_files(self, *, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove temp files last written over ``older_than`` seconds ago; how many."""
        return remove_stale_files(self.temp_dir, older_than=older_than)

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        async with spooled(chunks, self.temp_dir, max_bytes=max_bytes) as (info, temp):
            await anyio.to_thread.run_sync(self._publish, temp, info.sha256)
        return info

    def _publish(self, temp: Path, sha256: str) -> None:
        os.chmod(temp, 0o444)
        target = self.path_of(sha256)
        inner = target.parent
        created = not inner.is_dir()
        if created:
            inner.mkdir(parents=True, exist_ok=True)
        try:
            os.link(temp, target)
        except FileExistsError:
            return  # identical content is already stored: the temp file is dropped
        except OSError as error:  # a filesystem without hard links
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
            if target.exists():
                return
            os.replace(temp, target)
        _fsync_dir(inner)
        if created:  # the new folders' own entries must be durable too
            _fsync_dir(inner.parent)
            _fsync_dir(self.root)

    def open(self, sha256: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncGenerator[bytes]:
        return self._chunks(self.path_of(sha256), sha256, _check_chunk_size(chunk_size))

    async def _chunks(self, path: Path, sha256: str, chunk_size: int) -> AsyncGenerator[bytes]:
        try:
            file = await anyio.to_thread.run_sync(path.open, "rb")
        except FileNotFoundError:
            raise NotFound.of("blob", sha256) from None
        count = max(1, _READ_BATCH_BYTES // chunk_size)
        try:
            while True:
                batch = await anyio.to_thread.run_sync(_read_batch, file, chunk_size, count)
                for chunk in batch:
                    yield chunk
                if len(batch) < count:
                    return
        finally:
            file.close()  # no thread hop: this also runs when the consumer is cancelled

    async def read(self, sha256: str, *, max_bytes: int | None = None) -> bytes:
        path = self.path_of(sha256)

        def read_whole() -> bytes:
            with path.open("rb") as file:
                # Blobs never change: the size checked is the size read.
                if max_bytes is not None and os.fstat(file.fileno()).st_size > max_bytes:
                    raise too_large(max_bytes)
                return file.read()

        try:
            return await anyio.to_thread.run_sync(read_whole)
        except FileNotFoundError:
            raise NotFound.of("blob", sha256) from None

    async def exists(self, sha256: str) -> bool:
        return await anyio.to_thread.run_sync(self.path_of(sha256).is_file)

    async def delete(self, sha256: str) -> bool:
        path = self.path_of(sha256)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await anyio.to_thread.run_sync(remove)

    async def aclose(self) -> None:
        """Nothing to release: every call opens and closes its own files."""


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings.drive_blobs`` names: ``s3://bucket/prefix`` or a directory.

    Blocking (creates folders, clears stale temp files, builds an S3 client): call it at
    startup or in a worker thread.
    """
    location = settings.drive_blobs
    if location is None:
        return LocalBlobStore(settings.home / "drive")
    if location.startswith("s3://"):
        try:
            from openbuda.drive._s3 import S3BlobStore
        except ModuleNotFoundError as error:
            if (error.name or "").partition(".")[0] not in ("boto3", "botocore"):
                raise
            raise Unavailable(
                f"OPENBUDA_DRIVE_BLOBS={location!r} needs the s3 extra (boto3): "
                "pip install 'openbuda[s3]'",
                retryable=False,
            ) from error
        return S3BlobStore.from_url(
            location,
            endpoint_url=settings.drive_s3_endpoint_url,
            region=settings.drive_s3_region,
            spool_dir=settings.home / "tmp" / "drive-spool",
        )
    if "://" in location:
        raise InvalidRequest(
            f"OPENBUDA_DRIVE_BLOBS={location!r}: expected a directory or s3://bucket/prefix"
        )
    return LocalBlobStore(Path(location).expanduser())
