"""Put and open throughput of Drive's blob stores against a plain copy of the same file.

    python benchmarks/drive_blobs.py [--mib 256] [--runs 3] [--chunk-kib 1024] [--no-s3] [--dir D]

A file of ``--mib`` MiB of random bytes is made in a temporary directory. Each run, interleaved:

- ``copyfile``: ``shutil.copyfile`` of the file (the baseline), and ``copyfile + fsync``, since
  a put fsyncs its blob before it returns;
- ``put``: the file read in ``--chunk-kib`` chunks (in a worker thread) into ``BlobStore.put``,
  which hashes (sha256) and writes them; the blob is deleted after each run so no put is
  skipped as already stored;
- ``open``: the blob read back through ``BlobStore.open`` and thrown away.

Adapters: ``local`` (a ``LocalBlobStore`` on the same filesystem) and ``s3`` (an
``S3BlobStore`` on a moto server in this process: moto is not S3, so its figures show the
adapter's own overhead of spooling, hashing and HTTP, not S3's speed). Medians of MB/s
(10^6 bytes) and the ratio of each to ``copyfile``'s median; CPU time is this process's.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncGenerator, Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import boto3.session
from _common import fmt_ratio, machine_line, median, print_table, title
from moto.server import ThreadedMotoServer

from openbuda.drive.blobs import open_blob_store
from openbuda.ports import BlobStore
from openbuda.settings import Settings

MiB = 1024 * 1024


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list[float])
    cpu: list[float] = field(default_factory=list[float])


@contextmanager
def timed(timings: Timings) -> Generator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    timings.wall.append(time.perf_counter() - wall)
    timings.cpu.append(time.process_time() - cpu)


def make_source(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for _ in range(size // MiB):
            file.write(os.urandom(MiB))
        file.write(os.urandom(size % MiB))


async def file_chunks(path: Path, chunk_size: int) -> AsyncGenerator[bytes]:
    with path.open("rb") as file:
        while chunk := await anyio.to_thread.run_sync(file.read, chunk_size):
            yield chunk


def copy_and_fsync(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with target.open("rb") as file:
        os.fsync(file.fileno())


@contextmanager
def moto_endpoint() -> Generator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_settings(home: Path, endpoint: str) -> Settings:
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    client = boto3.session.Session().client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench-blobs")
    client.close()
    return Settings(
        home=home,
        drive_blobs="s3://bench-blobs/drive",
        drive_s3_endpoint_url=endpoint,
        drive_s3_region="us-east-1",
    )


async def measure(
    name: str,
    store: BlobStore,
    source: Path,
    size: int,
    workdir: Path,
    args: argparse.Namespace,
    rows: list[list[str]],
) -> None:
    copy, copy_fsync, put, read = Timings(), Timings(), Timings(), Timings()
    chunk_size = args.chunk_kib * 1024
    for run in range(args.runs + 1):  # run 0 warms caches up and is not counted
        target = workdir / "copy"
        scratch = Timings()
        with timed(copy if run else scratch):
            await anyio.to_thread.run_sync(shutil.copyfile, source, target)
        target.unlink()
        with timed(copy_fsync if run else scratch):
            await anyio.to_thread.run_sync(copy_and_fsync, source, target)
        target.unlink()
        with timed(put if run else scratch):
            info = await store.put(file_chunks(source, chunk_size))
        with timed(read if run else scratch):
            read_bytes = 0
            async for chunk in store.open(info.sha256, chunk_size=chunk_size):
                read_bytes += len(chunk)
        assert read_bytes == size
        await store.delete(info.sha256)
    baseline = size / median(copy.wall)
    for label, timings in (
        ("copyfile", copy),
        ("copyfile + fsync", copy_fsync),
        (f"{name} put", put),
        (f"{name} open", read),
    ):
        rate = size / median(timings.wall)
        rows.append(
            [
                label,
                f"{rate / 1e6:,.0f}",
                f"{median(timings.wall):.2f}",
                f"{median(timings.cpu):.2f}",
                fmt_ratio(rate / baseline),
            ]
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the file (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size of put and open")
    parser.add_argument("--no-s3", action="store_true", help="measure the local store only")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the file and the store go (default: TMPDIR)"
    )
    args = parser.parse_args()

    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="openbuda-bench-blobs-", dir=args.dir) as name:
        workdir = Path(name)
        source = workdir / "source.bin"
        make_source(source, args.mib * MiB)
        title(
            f"{args.mib} MiB file, {args.chunk_kib} KiB chunks: medians of {args.runs} runs "
            "(ratio: MB/s over copyfile's)"
        )
        headers = ["", "MB/s", "wall s", "CPU s", "vs copyfile"]

        local_rows: list[list[str]] = []
        store = open_blob_store(Settings(home=workdir / "home"))
        try:
            await measure("local", store, source, args.mib * MiB, workdir, args, local_rows)
        finally:
            await store.aclose()
        print_table(headers, local_rows)

        if not args.no_s3:
            with moto_endpoint() as endpoint:
                s3_rows: list[list[str]] = []
                store = open_blob_store(s3_settings(workdir / "home", endpoint))
                try:
                    await measure(
                        "s3 (moto)", store, source, args.mib * MiB, workdir, args, s3_rows
                    )
                finally:
                    await store.aclose()
            print()
            print_table(headers, s3_rows)


if __name__ == "__main__":
    anyio.run(main)
