"""The blob stores the ``BlobStore`` conformance suite runs over, and what it needs to look in.

``local`` is a ``LocalBlobStore`` in a tmp dir; ``s3`` an ``S3BlobStore`` on a moto server this
module starts in-process on a free port (one per test session, a fresh bucket per test). Both
are built through ``open_blob_store`` from ``Settings``, as the runtime builds them.
``stored_objects`` and ``temp_files`` look behind the port: what is stored, and what a put
left in its temp folder.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

import boto3.session
from moto.server import ThreadedMotoServer

from openbuda.drive._s3 import S3BlobStore
from openbuda.drive.blobs import LocalBlobStore, open_blob_store
from openbuda.ports import BlobStore
from openbuda.settings import Settings

from .sandbox_backends import free_port

__all__ = [
    "BLOB_STORES",
    "MOTO_REGION",
    "MotoS3",
    "moto_s3",
    "opened_blob_store",
    "stored_objects",
    "temp_files",
]

BLOB_STORES: Final = ("local", "s3")
MOTO_REGION: Final = "us-east-1"
MOTO_CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class MotoS3:
    """A moto S3 server on ``endpoint_url``; ``new_bucket`` creates an empty bucket."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url
        self.client: Any = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=MOTO_REGION,
        ).client("s3", endpoint_url=endpoint_url)

    def new_bucket(self) -> str:
        bucket = f"blobs-{secrets.token_hex(6)}"
        self.client.create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextmanager
def moto_s3() -> Generator[MotoS3]:
    """A moto server in this process on a free port, stopped on leaving."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        moto = MotoS3(f"http://127.0.0.1:{port}")
        try:
            yield moto
        finally:
            moto.client.close()
    finally:
        server.stop()


def blob_settings(name: str, home: Path, moto: MotoS3 | None) -> Settings:
    if name == "local":
        return Settings(home=home)
    assert moto is not None
    return Settings(
        home=home,
        drive_blobs=f"s3://{moto.new_bucket()}/drive/blobs",
        drive_s3_endpoint_url=moto.endpoint_url,
        drive_s3_region=MOTO_REGION,
    )


@asynccontextmanager
async def opened_blob_store(
    name: str, home: Path, moto: MotoS3 | None
) -> AsyncGenerator[BlobStore]:
    store = open_blob_store(blob_settings(name, home, moto))
    try:
        yield store
    finally:
        await store.aclose()


def stored_objects(store: BlobStore) -> list[str]:
    """Every blob file or object the store holds (paths or keys), sorted."""
    if isinstance(store, LocalBlobStore):
        return sorted(
            str(path.relative_to(store.root))
            for path in store.root.rglob("*")
            if path.is_file() and path.parent != store.temp_dir
        )
    assert isinstance(store, S3BlobStore)
    response = store._client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


def temp_files(store: BlobStore) -> list[Path]:
    """What puts left in the store's temp (local) or spool (S3) folder."""
    folder = store.temp_dir if isinstance(store, LocalBlobStore) else _spool_dir(store)
    return sorted(folder.iterdir())


def _spool_dir(store: BlobStore) -> Path:
    assert isinstance(store, S3BlobStore)
    return store.spool_dir
