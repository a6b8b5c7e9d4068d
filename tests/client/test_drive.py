"""``client.drive`` and ``client.sessions.save``: the blocking SDK against a real server
(uvicorn on a thread, so uploads and downloads really stream over a socket), and the async SDK
in-process. Listing, streamed writes from bytes and files, reads, downloads checked against the
sha256, history, diff, restore, typed 413 errors and local path checks."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from openbuda.client import (
    ApiError,
    AsyncClient,
    Client,
    DriveDiff,
    DriveDownload,
    DriveEntry,
    DriveVersion,
    InvalidResponse,
)
from openbuda.domain.errors import InvalidPath, NotFound, QuotaExceeded, TooLarge
from openbuda.testing import ScriptedModel, reply
from tests.client.live_server import API_KEY, LiveServer, in_process_client, live_server

MiB = 1024 * 1024


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def server(tmp_path: Path, model: ScriptedModel) -> Iterator[LiveServer]:
    with live_server(
        tmp_path / "server", model, drive_max_file_bytes=8 * MiB, drive_quota_bytes=12 * MiB
    ) as running:
        yield running


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with server.client() as client:
        yield client


def test_write_read_list_and_download_over_a_socket(client: Client, tmp_path: Path) -> None:
    agent = client.agents.create("keeper")
    data = os.urandom(3 * MiB + 5)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    sent: list[int] = []
    with source.open("rb") as f:
        entry = client.drive.write("data/big.bin", f, agent_id=agent.id, progress=sent.append)
    assert isinstance(entry, DriveEntry)
    assert (entry.path, entry.size, entry.version) == ("data/big.bin", len(data), 1)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() and sum(sent) == len(data)
    assert len(sent) == 4  # streamed in 1 MiB chunks

    assert client.drive.read("data/big.bin", agent_id=agent.id) == data
    with client.drive.iter_bytes("data/big.bin", agent_id=agent.id) as chunks:
        pieces = list(chunks)
    assert b"".join(pieces) == data and chunks.sent is not None and chunks.sent.version == 1

    target = tmp_path / "out" / "copy.bin"
    target.parent.mkdir()
    received: list[int] = []
    done = client.drive.download(
        "data/big.bin", target, agent_id=agent.id, progress=received.append
    )
    assert isinstance(done, DriveDownload)
    assert (done.version, done.size, done.sha256) == (1, len(data), entry.sha256)
    assert target.read_bytes() == data and sum(received) == len(data)
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.bin"]  # no temporary left
    buffer = io.BytesIO()
    client.drive.download("data/big.bin", buffer, agent_id=agent.id)
    assert buffer.getvalue() == data

    client.drive.write("readme.md", b"# hi\n")  # the Space Drive
    client.drive.write("empty.txt", b"")
    assert client.drive.read("empty.txt") == b""
    assert [(e.kind, e.path) for e in client.drive.list(agent_id=agent.id)] == [("dir", "data")]
    assert [e.path for e in client.drive.list("data", agent_id=agent.id)] == ["data/big.bin"]
    assert [e.path for e in client.drive.list(recursive=True)] == ["empty.txt", "readme.md"]
    with pytest.raises(NotFound):
        client.drive.read("data/big.bin")  # not in the Space Drive
    with pytest.raises(NotFound):
        client.drive.download("missing.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


def test_history_diff_delete_restore(client: Client) -> None:
    client.drive.write("notes.md", b"one\n")
    client.drive.write("notes.md", io.BytesIO(b"one\ntwo\n"))  # a file object of bytes
    deleted = client.drive.delete("notes.md")
    assert deleted.deleted and deleted.version == 3
    with pytest.raises(NotFound):
        client.drive.read("notes.md")
    assert client.drive.read("notes.md", version=2) == b"one\ntwo\n"
    page = client.drive.history("notes.md")
    assert all(isinstance(v, DriveVersion) for v in page.items)
    assert [(v.version, v.op) for v in page.items] == [(3, "delete"), (2, "write"), (1, "write")]
    me = client.me()
    assert page.items[0].member_id == me.member.id
    first = client.drive.history("notes.md", limit=1)
    assert first.next_cursor == "3"
    assert [v.version for v in client.drive.history("notes.md", cursor="3").items] == [2, 1]

    diff = client.drive.diff("notes.md", 1, 2)
    assert isinstance(diff, DriveDiff) and (diff.from_, diff.to, diff.binary) == (1, 2, False)
    assert "+two\n" in diff.diff
    restored = client.drive.restore("notes.md", 1)
    assert restored.version == 4 and not restored.deleted
    assert client.drive.read("notes.md") == b"one\n"
    assert client.drive.history("notes.md").items[0].restored_from == 1


def test_limits_are_typed_errors(client: Client) -> None:
    with pytest.raises(TooLarge) as too_large:
        client.drive.write("big.bin", b"x" * (8 * MiB + 1))
    assert not isinstance(too_large.value, QuotaExceeded)
    assert too_large.value.details["max_bytes"] == 8 * MiB
    # a stream of unknown length is refused once it passes the limit
    with pytest.raises(TooLarge):
        client.drive.write("big.bin", io.BufferedReader(_Unseekable(b"x" * (9 * MiB))))
    client.drive.write("a.bin", b"a" * (7 * MiB))
    with pytest.raises(QuotaExceeded) as over:
        client.drive.write("b.bin", b"b" * (6 * MiB))
    assert isinstance(over.value, ApiError) and over.value.status == 413
    assert over.value.details["quota_bytes"] == 12 * MiB
    assert [e.path for e in client.drive.list()] == ["a.bin"]


class _Unseekable(io.RawIOBase):
    """A pipe-like file: no length known before reading it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(buffer)


def test_paths_are_checked_before_anything_is_sent(client: Client) -> None:
    for bad in ("../x", "a/../b", "/etc/passwd", "a//b", "..\\x", "a\x00b", "．．/x", ""):
        with pytest.raises(InvalidPath):
            client.drive.write(bad, b"x")
        with pytest.raises(InvalidPath):
            client.drive.read(bad)
    # names that need percent-encoding survive the round trip
    for name in ("100% sure?.txt", "a#b.txt", "dir with space/ü.md", "%2e%2e"):
        if name == "%2e%2e":
            with pytest.raises(InvalidPath):  # the server refuses what looks encoded twice
                client.drive.write(name, b"x")
            continue
        assert client.drive.write(name, name.encode()).path == name
        assert client.drive.read(name) == name.encode()


def test_a_download_that_does_not_match_its_hash_is_refused(
    server: LiveServer, tmp_path: Path
) -> None:
    with server.client() as real:
        real.drive.write("f.txt", b"the real content")

    def corrupt(request: httpx.Request) -> httpx.Response:
        with httpx.Client() as plain:
            answer = plain.get(str(request.url), headers=request.headers)
        body = answer.content.replace(b"real", b"fake")
        return httpx.Response(200, headers=answer.headers, content=body)

    with (
        Client(server.url, API_KEY, transport=httpx.MockTransport(corrupt)) as client,
        pytest.raises(InvalidResponse, match="does not match"),
    ):
        client.drive.download("f.txt", tmp_path / "f.txt")
    assert not (tmp_path / "f.txt").exists()


def test_save_a_session(client: Client, model: ScriptedModel) -> None:
    agent = client.agents.create("keeper")
    session = client.sessions.create(agent.id, title="first")
    model.add(reply("Four."))
    accepted = client.sessions.send(session.id, "2 + 2?")
    with client.sessions.stream(session.id, until_idle=True) as events:
        list(events)
    saved = client.sessions.save(session.id, "saved/first.md")
    assert saved.path == "saved/first.md" and saved.version == 1
    text = client.drive.read("saved/first.md", agent_id=agent.id).decode()
    assert "2 + 2?" in text and "Four." in text
    result = client.sessions.save(session.id, "result.md", drive="space", task_id=accepted.task_id)
    assert result.path == "result.md" and "Four." in client.drive.read("result.md").decode()
    with pytest.raises(NotFound):
        client.sessions.save("ses_missing", "x.md")


# -- async ---------------------------------------------------------------------------------------


@pytest.fixture
async def async_client(tmp_path: Path, model: ScriptedModel) -> AsyncIterator[AsyncClient]:
    async with in_process_client(tmp_path, model, drive_max_file_bytes=2 * MiB) as client:
        yield client


@pytest.mark.anyio
async def test_the_async_drive(async_client: AsyncClient, tmp_path: Path) -> None:
    client = async_client
    agent = await client.agents.create("keeper")
    data = os.urandom(MiB + 3)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    with source.open("rb") as f:
        entry = await client.drive.write("in.bin", f, agent_id=agent.id)
    assert entry.size == len(data) and entry.version == 1
    assert await client.drive.read("in.bin", agent_id=agent.id) == data
    async with client.drive.iter_bytes("in.bin", agent_id=agent.id) as chunks:
        assert b"".join([c async for c in chunks]) == data
    done = await client.drive.download("in.bin", tmp_path / "out.bin", agent_id=agent.id)
    assert done.sha256 == entry.sha256 and (tmp_path / "out.bin").read_bytes() == data

    await client.drive.write("t.md", b"a\n")
    await client.drive.write("t.md", b"b\n")
    assert [e.path for e in await client.drive.list()] == ["t.md"]
    assert "+b\n" in (await client.drive.diff("t.md", 1)).diff
    assert (await client.drive.delete("t.md")).deleted
    assert (await client.drive.history("t.md")).items[0].op == "delete"
    assert (await client.drive.restore("t.md", 2)).version == 4
    assert await client.drive.read("t.md") == b"b\n"
    with pytest.raises(TooLarge):
        await client.drive.write("huge.bin", b"x" * (2 * MiB + 1))
    with pytest.raises(InvalidPath):
        await client.drive.read("../t.md")
    session = await client.sessions.create(agent.id)
    saved = await client.sessions.save(session.id, "empty.md", drive="space")
    assert saved.path == "empty.md" and await client.drive.read("empty.md")
