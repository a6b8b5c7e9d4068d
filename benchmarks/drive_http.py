"""Drive throughput through the real HTTP API, against a plain file copy of the same bytes.

    python benchmarks/drive_http.py [--size-mib 256] [--rounds 3]

``openbuda serve`` runs as a subprocess (SQLite and the local blob store in a temporary home);
the client is the blocking SDK in this process, over loopback TCP. Each round, interleaved:

- **copy**: ``shutil.copyfile`` of the source file, then ``fsync`` — what the disk does alone;
- **upload**: ``client.drive.write(path, file)`` — the file streamed as ``PUT …/files/{path}``,
  the server streaming the body into the blob store (hashing it) and committing a version;
- **download**: ``client.drive.download(path, file)`` — ``GET …/files/{path}`` streamed into a
  temporary file, hashed by the SDK and checked against the ETag, then renamed.

Every round uploads different content (its first bytes change), so no upload is deduplicated.
MB/s are 10^6 bytes per second of wall time, medians over the rounds; the ratio is Drive's
throughput over the copy's. The server's peak RSS (``VmHWM``) shows that neither direction
holds the file in memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from _common import machine_line, print_table, title

from openbuda.client import Client, ConnectionFailed

API_KEY = "ob_bench_drive_key_0123456789abcdef"
CHUNK = 1024 * 1024


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def openbuda_command() -> list[str]:
    script = Path(sys.executable).with_name("openbuda")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from openbuda.cli.main import main; main()"]


def spawn_serve(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OPENBUDA_HOME": str(home),
        "OPENBUDA_PORT": str(port),
        "OPENBUDA_BOOTSTRAP_API_KEY": API_KEY,
        "OPENBUDA_LOG_LEVEL": "WARNING",
    }
    for name in (
        "OPENBUDA_DATABASE_URL",
        "OPENBUDA_URL",
        "OPENBUDA_API_KEY",
        "OPENBUDA_DRIVE_BLOBS",
    ):
        env.pop(name, None)
    with log.open("ab") as output:
        return subprocess.Popen(
            [*openbuda_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=output,
        )


def until_healthy(client: Client, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"openbuda serve exited with {process.returncode}")
        try:
            client.health()
            return
        except ConnectionFailed:
            time.sleep(0.02)
    raise RuntimeError("openbuda serve did not answer within 60 s")


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def make_source(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            piece = os.urandom(min(CHUNK, left))
            out.write(piece)
            left -= len(piece)


def mark(path: Path, round_number: int) -> None:
    """Make this round's content differ from every other round's (no deduplication)."""
    with path.open("r+b") as f:
        f.write(round_number.to_bytes(8, "big"))


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def copy_and_sync(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with target.open("rb+") as f:
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="file size (default 256 MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024

    with tempfile.TemporaryDirectory(prefix="openbuda-drive-bench-") as workdir:
        work = Path(workdir)
        source, copy_target, download_target = (
            work / "source.bin",
            work / "copy.bin",
            work / "down.bin",
        )
        make_source(source, size)
        port = free_port()
        server = spawn_serve(work / "home", port, work / "serve.log")
        timeout = httpx.Timeout(60.0)
        try:
            with Client(f"http://127.0.0.1:{port}", API_KEY, timeout=timeout) as client:
                until_healthy(client, server)
                rss_idle = peak_rss(server.pid)
                times: dict[str, list[float]] = {"copy": [], "upload": [], "download": []}
                for number in range(args.rounds + 1):  # round 0 warms up
                    mark(source, number)
                    copied = timed(lambda: copy_and_sync(source, copy_target))

                    def upload() -> None:
                        with source.open("rb") as f:
                            entry = client.drive.write("bench/big.bin", f)
                        assert entry.size == size

                    uploaded = timed(upload)
                    downloaded = timed(
                        lambda: client.drive.download("bench/big.bin", download_target)
                    )
                    copy_target.unlink()
                    download_target.unlink()
                    if number:
                        times["copy"].append(copied)
                        times["upload"].append(uploaded)
                        times["download"].append(downloaded)
                rss_peak = peak_rss(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    title(f"Drive over HTTP: {args.size_mib} MiB, {args.rounds} rounds (medians), openbuda serve")
    print(machine_line())
    copy_rate = size / statistics.median(times["copy"]) / 1e6
    rows: list[list[str]] = []
    for name, label in (
        ("copy", "plain file copy + fsync"),
        ("upload", "upload: SDK write → PUT"),
        ("download", "download: GET → SDK download"),
    ):
        seconds = statistics.median(times[name])
        rate = size / seconds / 1e6
        rows.append([label, f"{seconds:.2f} s", f"{rate:,.0f} MB/s", f"{rate / copy_rate:.2f}×"])
    print()
    print_table(["operation", "time", "throughput", "vs copy"], rows)
    print()
    print(
        f"server peak RSS: {rss_idle / 2**20:,.0f} MiB once started, "
        f"{rss_peak / 2**20:,.0f} MiB after every transfer (file: {args.size_mib} MiB)"
    )


if __name__ == "__main__":
    main()
