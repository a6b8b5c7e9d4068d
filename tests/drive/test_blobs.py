"""What each blob store does beyond the port's conformance suite: the local layout and crash
safety, S3 keys, multipart uploads and error mapping, and ``open_blob_store``'s choice."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import boto3.session
import botocore.config
import pytest

from openbuda.domain.errors import InvalidRequest, Unavailable
from openbuda.drive._s3 import S3BlobStore
from openbuda.drive.blobs import LocalBlobStore, open_blob_store
from openbuda.settings import Settings
from tests.conformance.blob_stores import MOTO_CREDENTIALS, MOTO_REGION, MotoS3, moto_s3
from tests.conformance.sandbox_backends import free_port

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SRC = Path(__file__).resolve().parents[2] / "src"


async def chunked(content: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------------------------------------
# Local


async def test_local_blobs_are_read_only_files_under_their_hash(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "drive")
    info = await store.put(chunked(b"content"))

    path = tmp_path / "drive" / info.sha256[:2] / info.sha256[2:4] / info.sha256
    assert path.read_bytes() == b"content"
    assert path.stat().st_mode & 0o777 == 0o444
    assert [p.name for p in (tmp_path / "drive").iterdir()] != []
    assert list(store.temp_dir.iterdir()) == []


async def test_local_open_closed_early_closes_its_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "drive")
    info = await store.put(chunked(b"x" * (3 * MiB)))
    path = str(store.path_of(info.sha256))

    def open_on_blob() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if _link_target(fd) == path)

    chunks = store.open(info.sha256, chunk_size=64 * 1024)
    assert isinstance(chunks, AsyncGenerator)
    await anext(chunks)
    assert open_on_blob() == 1
    await chunks.aclose()
    assert open_on_blob() == 0


def _link_target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:  # closed between listing and reading
        return None


async def test_local_put_cancelled_midway_keeps_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "drive")
    started = anyio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * MiB
            started.set()

    async with anyio.create_task_group() as group:
        group.start_soon(store.put, endless())
        await started.wait()
        group.cancel_scope.cancel()

    assert list(store.temp_dir.iterdir()) == []
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


async def test_local_startup_removes_only_stale_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "drive"
    LocalBlobStore(root)
    stale = root / "tmp" / "stale.part"
    young = root / "tmp" / "young.part"
    other = root / "tmp" / "notes.txt"
    for path in (stale, young, other):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))

    LocalBlobStore(root)

    assert sorted(p.name for p in (root / "tmp").iterdir()) == ["notes.txt", "young.part"]


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio

    from openbuda.drive.blobs import LocalBlobStore

    async def main() -> None:
        store = LocalBlobStore(Path(sys.argv[1]))

        async def chunks():
            for index in range(64):
                yield bytes([index]) * (1024 * 1024)
                if index == 8:  # the temp file holds several MiB: tell the parent, then hang
                    print("writing", flush=True)
                    await anyio.sleep(3600)

        await store.put(chunks())

    anyio.run(main)
    """
)


def test_local_writer_killed_midway_leaves_no_blob(tmp_path: Path) -> None:
    root = tmp_path / "drive"
    content = b"".join(bytes([index]) * MiB for index in range(64))
    sha256 = sha256_of(content)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"writing\n"
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()

    leftovers = list((root / "tmp").iterdir())
    assert len(leftovers) == 1 and leftovers[0].suffix == ".part"
    assert leftovers[0].stat().st_size > 0
    store = LocalBlobStore(root)  # a young leftover may be another writer's: it stays
    assert not store.path_of(sha256).exists()
    assert [p for p in root.rglob("*") if p.is_file() and p.parent != store.temp_dir] == []

    async def put_again() -> None:
        assert not await store.exists(sha256)
        info = await store.put(chunked(content, MiB))
        assert info.sha256 == sha256
        assert await store.read(info.sha256) == content

    anyio.run(put_again)
    assert store.remove_stale_temp_files(older_than=0) == 1
    assert list(store.temp_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# open_blob_store


async def test_open_blob_store_defaults_to_a_local_folder_in_home(tmp_path: Path) -> None:
    store = open_blob_store(Settings(home=tmp_path))

    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "drive"
    await store.aclose()


async def test_open_blob_store_takes_a_folder(tmp_path: Path) -> None:
    store = open_blob_store(Settings(home=tmp_path, drive_blobs=str(tmp_path / "elsewhere")))

    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "elsewhere"


@pytest.mark.parametrize("location", ["gs://bucket/prefix", "s3://", "s3:///prefix"])
def test_open_blob_store_refuses_what_it_cannot_open(tmp_path: Path, location: str) -> None:
    with pytest.raises(InvalidRequest, match=r"s3://bucket/prefix"):
        open_blob_store(Settings(home=tmp_path, drive_blobs=location))


def test_open_blob_store_says_when_boto3_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "openbuda.drive._s3")
    monkeypatch.setitem(sys.modules, "boto3", None)

    with pytest.raises(Unavailable, match=r"pip install 'openbuda\[s3\]'") as raised:
        open_blob_store(Settings(home=tmp_path, drive_blobs="s3://bucket/prefix"))
    assert not raised.value.retryable


# ---------------------------------------------------------------------------------------------
# S3


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MOTO_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def s3_store(moto: MotoS3, url: str, tmp_path: Path, **options: Any) -> S3BlobStore:
    return S3BlobStore.from_url(
        url,
        endpoint_url=moto.endpoint_url,
        region=MOTO_REGION,
        spool_dir=tmp_path / "spool",
        **options,
    )


@pytest.mark.usefixtures("aws_env")
async def test_s3_keys_are_prefix_and_hash(moto: MotoS3, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    with_prefix = s3_store(moto, f"s3://{bucket}/drive/blobs/", tmp_path)
    without = s3_store(moto, f"s3://{bucket}", tmp_path)

    info = await with_prefix.put(chunked(b"one"))
    await without.put(chunked(b"two"))

    two = sha256_of(b"two")
    assert moto.keys(bucket) == sorted(
        [
            f"drive/blobs/{info.sha256[:2]}/{info.sha256[2:4]}/{info.sha256}",
            f"{two[:2]}/{two[2:4]}/{two}",
        ]
    )
    assert not await without.exists(info.sha256)  # another prefix, another store
    await with_prefix.aclose()
    await without.aclose()


@pytest.mark.usefixtures("aws_env")
async def test_s3_big_content_is_uploaded_in_parts(moto: MotoS3, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    store = s3_store(moto, f"s3://{bucket}/p", tmp_path, multipart_bytes=5 * MiB)
    content = os.urandom(11 * MiB + 3)

    info = await store.put(chunked(content, MiB))

    head = moto.client.head_object(Bucket=bucket, Key=store.key_of(info.sha256))
    assert head["ETag"].strip('"').endswith("-3")  # the ETag of a 3-part multipart upload
    assert await store.read(info.sha256) == content
    await store.aclose()


@pytest.mark.usefixtures("aws_env")
async def test_s3_a_missing_bucket_is_a_lasting_unavailable(moto: MotoS3, tmp_path: Path) -> None:
    store = s3_store(moto, "s3://no-such-bucket/p", tmp_path)

    with pytest.raises(Unavailable, match="NoSuchBucket") as raised:
        await store.put(chunked(b"content"))
    assert not raised.value.retryable
    assert list((tmp_path / "spool").iterdir()) == []
    await store.aclose()


@pytest.mark.usefixtures("aws_env")
async def test_s3_unreachable_storage_is_a_retryable_unavailable(tmp_path: Path) -> None:
    client = boto3.session.Session(region_name=MOTO_REGION).client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    store = S3BlobStore("bucket", "p", spool_dir=tmp_path / "spool", client=client)

    with pytest.raises(Unavailable, match="unreachable") as raised:
        await store.exists(sha256_of(b"x"))
    assert raised.value.retryable
    with pytest.raises(Unavailable):
        await anext(store.open(sha256_of(b"x")))
    await store.aclose()
