"""The conformance suite of ``openbuda.ports.BlobStore``: every adapter passes it.

Parametrised over ``local`` (a directory) and ``s3`` (a moto server started by this suite; see
``blob_stores``). Driven through the port, plus two looks behind it (``stored_objects``,
``temp_files``) for what must not be left: a second copy, a partial blob, a temp file.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from openbuda.domain.errors import InvalidRequest, NotFound, TooLarge
from openbuda.ports import BlobInfo, BlobStore

from .blob_stores import (
    BLOB_STORES,
    MOTO_CREDENTIALS,
    MotoS3,
    moto_s3,
    opened_blob_store,
    stored_objects,
    temp_files,
)

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
MULTI_CHUNK = bytes(range(256)) * (3 * MiB // 256) + b"tail of 17 bytes!"
"""Several MiB: several write batches and several read chunks, with an uneven end."""


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


@pytest.fixture(params=BLOB_STORES)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BlobStore]:
    moto: MotoS3 | None = None
    if request.param == "s3":
        for name, value in MOTO_CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        moto = request.getfixturevalue("moto")
    async with opened_blob_store(request.param, tmp_path / "home", moto) as store:
        yield store


async def chunked(content: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


def info_of(content: bytes) -> BlobInfo:
    return BlobInfo(sha256=hashlib.sha256(content).hexdigest(), size=len(content))


@pytest.mark.parametrize(
    "content", [b"", b"hello, drive", MULTI_CHUNK], ids=["empty", "small", "multi-chunk"]
)
async def test_round_trip(store: BlobStore, content: bytes) -> None:
    info = await store.put(chunked(content))

    assert info == info_of(content)
    assert await store.exists(info.sha256)
    assert b"".join(await collect(store.open(info.sha256))) == content
    assert await store.read(info.sha256) == content
    assert len(stored_objects(store)) == 1
    assert temp_files(store) == []


async def test_open_yields_chunks_of_at_most_chunk_size(store: BlobStore) -> None:
    info = await store.put(chunked(MULTI_CHUNK, 1000 * 1000))

    chunks = await collect(store.open(info.sha256, chunk_size=256 * 1024))

    assert len(chunks) >= len(MULTI_CHUNK) // (256 * 1024)
    assert all(0 < len(chunk) <= 256 * 1024 for chunk in chunks)
    assert b"".join(chunks) == MULTI_CHUNK


async def test_identical_content_is_stored_once(store: BlobStore) -> None:
    first = await store.put(chunked(MULTI_CHUNK, 64 * 1024))
    second = await store.put(chunked(MULTI_CHUNK, 1000))  # other chunking, same content

    assert first == second == info_of(MULTI_CHUNK)
    assert len(stored_objects(store)) == 1
    assert await store.read(first.sha256) == MULTI_CHUNK


async def test_concurrent_puts_of_the_same_content_all_succeed(store: BlobStore) -> None:
    results: list[BlobInfo] = []

    async def put() -> None:
        results.append(await store.put(chunked(MULTI_CHUNK, 128 * 1024)))

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(put)

    assert results == [info_of(MULTI_CHUNK)] * 4
    assert len(stored_objects(store)) == 1
    assert await store.read(results[0].sha256) == MULTI_CHUNK
    assert temp_files(store) == []


async def test_different_contents_are_stored_apart(store: BlobStore) -> None:
    one = await store.put(chunked(b"one"))
    two = await store.put(chunked(b"two"))

    assert one.sha256 != two.sha256
    assert await store.read(one.sha256) == b"one"
    assert await store.read(two.sha256) == b"two"
    assert len(stored_objects(store)) == 2


async def test_put_past_max_bytes_is_too_large_and_keeps_nothing(store: BlobStore) -> None:
    limit = 2 * MiB

    with pytest.raises(TooLarge, match=f"limit of {limit} bytes"):
        await store.put(chunked(MULTI_CHUNK), max_bytes=limit)

    assert not await store.exists(info_of(MULTI_CHUNK).sha256)
    assert not await store.exists(info_of(MULTI_CHUNK[:limit]).sha256)
    assert stored_objects(store) == []
    assert temp_files(store) == []


async def test_put_of_exactly_max_bytes_is_stored(store: BlobStore) -> None:
    info = await store.put(chunked(b"12345"), max_bytes=5)

    assert info == info_of(b"12345")


async def test_a_failing_source_keeps_nothing(store: BlobStore) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield MULTI_CHUNK[: 2 * MiB]
        raise OSError("the upload was cut")

    with pytest.raises(OSError, match="the upload was cut"):
        await store.put(failing())

    assert stored_objects(store) == []
    assert temp_files(store) == []
    info = await store.put(chunked(b"still works"))
    assert await store.read(info.sha256) == b"still works"


async def test_open_of_missing_content_is_not_found_on_the_first_step(store: BlobStore) -> None:
    missing = info_of(b"never stored").sha256
    chunks = store.open(missing)

    with pytest.raises(NotFound, match=missing):
        await anext(chunks)
    with pytest.raises(NotFound):
        await store.read(missing)
    assert not await store.exists(missing)


async def test_open_closed_early_leaves_the_store_working(store: BlobStore) -> None:
    info = await store.put(chunked(MULTI_CHUNK))
    chunks = store.open(info.sha256, chunk_size=64 * 1024)
    assert isinstance(chunks, AsyncGenerator)  # so a consumer can close it early

    first = await anext(chunks)
    await chunks.aclose()

    assert first == MULTI_CHUNK[: 64 * 1024]
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)
    assert await store.read(info.sha256) == MULTI_CHUNK
    assert await store.delete(info.sha256)


async def test_read_honours_max_bytes(store: BlobStore) -> None:
    info = await store.put(chunked(b"0123456789"))

    assert await store.read(info.sha256, max_bytes=10) == b"0123456789"
    with pytest.raises(TooLarge, match="limit of 9 bytes"):
        await store.read(info.sha256, max_bytes=9)


async def test_delete(store: BlobStore) -> None:
    info = await store.put(chunked(b"short-lived"))

    assert await store.delete(info.sha256)
    assert not await store.exists(info.sha256)
    assert not await store.delete(info.sha256)
    with pytest.raises(NotFound):
        await store.read(info.sha256)
    assert stored_objects(store) == []
    assert await store.put(chunked(b"short-lived")) == info  # stored again after a delete
    assert await store.read(info.sha256) == b"short-lived"


MALFORMED_SHA256 = (
    "",
    "abc",
    "A" * 64,
    "g" * 64,
    "0" * 63,
    "0" * 65,
    "0" * 64 + "\n",
    "../" * 21 + "0",
    "0" * 62 + "/x",
)


async def test_a_malformed_sha256_is_an_invalid_request(store: BlobStore) -> None:
    for sha256 in MALFORMED_SHA256:
        with pytest.raises(InvalidRequest, match="not a sha256"):
            await store.exists(sha256)
        with pytest.raises(InvalidRequest):
            await store.read(sha256)
        with pytest.raises(InvalidRequest):
            await store.delete(sha256)
        with pytest.raises(InvalidRequest):
            await anext(store.open(sha256))
    assert stored_objects(store) == []


async def test_open_refuses_a_chunk_size_below_one(store: BlobStore) -> None:
    info = await store.put(chunked(b"x"))

    with pytest.raises(InvalidRequest, match="chunk_size"):
        await anext(store.open(info.sha256, chunk_size=0))
