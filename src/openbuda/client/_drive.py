"""``client.drive``: the Space Drive and the agents' Drives from the SDK, blocking (``Drive``)
and async (``AsyncDrive``). Without ``agent_id`` a call is about the Space Drive.

::

    client.drive.write("notes/plan.md", b"# Plan\\n")                 # the Space Drive
    with open("data.csv", "rb") as f:                                  # streamed, any size
        client.drive.write("data.csv", f, agent_id=agent.id)           # an agent's Drive
    text = client.drive.read("notes/plan.md")                          # bytes
    client.drive.download("data.csv", "copy.csv", agent_id=agent.id)   # streamed, hash checked
    for entry in client.drive.list("notes"):                           # files and folders
        print(entry.kind, entry.path, entry.size)
    client.drive.history("notes/plan.md").items                        # newest first, who
    client.drive.restore("notes/plan.md", version=1)

Paths are checked here as the server checks them (``InvalidPath``), so that an HTTP library
never reads ``..`` as a step up. Content goes both ways as a stream; downloads are checked
against the sha256 the server sends. A file over the server's limit raises ``TooLarge``; one
that would take the space past its quota ``QuotaExceeded`` (both ``openbuda.domain.errors``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TypeAlias
from urllib.parse import quote

import anyio
import httpx

from openbuda.client._calls import Call
from openbuda.client._closing import AsyncClosingIterator, ClosingIterator
from openbuda.client._errors import InvalidResponse
from openbuda.client._http import connection_failed, headers_for
from openbuda.client._http import read_answer as _read
from openbuda.client._models import DriveDiff, DriveDownload, DriveEntry, DriveVersion, Page
from openbuda.domain.drive import drive_path

if TYPE_CHECKING:
    from openbuda.client._async import AsyncClient
    from openbuda.client._sync import Client

__all__ = [
    "AsyncDrive",
    "AsyncDriveBytes",
    "Drive",
    "DriveBytes",
    "DriveName",
    "UploadData",
    "session_save",
]

CHUNK: Final = 1024 * 1024
"""Bytes read from a file (upload) or the network (download) at a time."""
TRANSFER_READ_S: Final = 300.0
"""How long an upload may wait for the server's answer once its body is sent (it stores the
blob and commits the version)."""

DriveName: TypeAlias = Literal["agent", "space"]
UploadData: TypeAlias = bytes | bytearray | memoryview | IO[bytes]
"""What ``write`` uploads: bytes, or a binary file object read in chunks."""
Progress: TypeAlias = Callable[[int], None]
"""Called with the number of bytes just sent or received."""
Destination: TypeAlias = str | os.PathLike[str] | IO[bytes]


# -- calls ---------------------------------------------------------------------------------------


def _base(agent_id: str | None) -> str:
    if agent_id is None:
        return "/v1/space/drive"
    return f"/v1/agents/{quote(agent_id, safe='')}/drive"


def _url(agent_id: str | None, kind: str, path: str) -> str:
    """``/v1/…/drive/{kind}/{path}``, each segment percent-encoded (the path checked first)."""
    return f"{_base(agent_id)}/{kind}/{quote(drive_path(path), safe='/')}"


def _entries(body: Any) -> list[DriveEntry]:
    items: list[Any] = body.get("items", []) if isinstance(body, dict) else body
    return [DriveEntry.model_validate(item) for item in items]


def _history_page(body: Any) -> Page[DriveVersion]:
    items: list[Any] = body.get("items", [])
    cursor: Any = body.get("next_cursor")
    return Page([DriveVersion.model_validate(item) for item in items], cursor, raw=body)


def _list(agent_id: str | None, prefix: str | None, recursive: bool) -> Call[list[DriveEntry]]:
    params: dict[str, str | int] = {}
    if prefix:
        params["prefix"] = prefix
    if recursive:
        params["recursive"] = "true"
    return Call("GET", f"{_base(agent_id)}/files", _entries, params)


def _upload(agent_id: str | None, path: str) -> Call[DriveEntry]:
    return Call("PUT", _url(agent_id, "files", path), DriveEntry.model_validate)


def _download(agent_id: str | None, path: str, version: int | None) -> Call[None]:
    params: dict[str, str | int] = {} if version is None else {"version": version}
    return Call("GET", _url(agent_id, "files", path), lambda _: None, params)


def _delete(agent_id: str | None, path: str) -> Call[DriveEntry]:
    return Call("DELETE", _url(agent_id, "files", path), DriveEntry.model_validate)


def _history(
    agent_id: str | None, path: str, limit: int | None, before: int | None, cursor: str | None
) -> Call[Page[DriveVersion]]:
    values = {"limit": limit, "before": before, "cursor": cursor}
    params = {name: value for name, value in values.items() if value is not None}
    return Call("GET", _url(agent_id, "versions", path), _history_page, params)


def _diff(
    agent_id: str | None, path: str, from_version: int, to_version: int | None
) -> Call[DriveDiff]:
    params: dict[str, str | int] = {"from": from_version}
    if to_version is not None:
        params["to"] = to_version
    return Call("GET", _url(agent_id, "diff", path), DriveDiff.model_validate, params)


def _restore(agent_id: str | None, path: str, version: int) -> Call[DriveEntry]:
    return Call(
        "POST",
        _url(agent_id, "restore", path),
        DriveEntry.model_validate,
        json={"version": version},
    )


def session_save(
    session_id: str, path: str, drive: DriveName | None, task_id: str | None
) -> Call[DriveEntry]:
    """``POST /v1/sessions/{id}/save`` (``client.sessions.save``)."""
    body: dict[str, Any] = {"path": drive_path(path)}
    if drive is not None:
        body["drive"] = drive
    if task_id is not None:
        body["task_id"] = task_id
    return Call(
        "POST",
        f"/v1/sessions/{quote(session_id, safe='')}/save",
        DriveEntry.model_validate,
        json=body,
    )


# -- bodies --------------------------------------------------------------------------------------


def _size_of(data: UploadData) -> int | None:
    """The bytes left to upload, when they can be known without reading them."""
    if isinstance(data, bytes | bytearray | memoryview):
        return memoryview(data).nbytes
    try:
        if data.seekable():
            here = data.tell()
            end = data.seek(0, os.SEEK_END)
            data.seek(here)
            return max(0, end - here)
    except (OSError, ValueError):
        pass
    return None


def _upload_headers(connection_headers: dict[str, str], size: int | None) -> dict[str, str]:
    headers = {**connection_headers, "Content-Type": "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)  # httpx then sends no chunked encoding
    return headers


def _chunks(data: UploadData, progress: Progress | None) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            piece = bytes(view[start : start + CHUNK])
            yield piece
            if progress is not None:
                progress(len(piece))
        return
    while piece := data.read(CHUNK):
        yield piece
        if progress is not None:
            progress(len(piece))


async def _async_chunks(data: UploadData, progress: Progress | None) -> AsyncIterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        for piece in _chunks(data, progress):
            yield piece
        return
    while piece := await anyio.to_thread.run_sync(data.read, CHUNK):
        yield piece
        if progress is not None:
            progress(len(piece))


def _transfer_timeout(http: httpx.Client | httpx.AsyncClient) -> httpx.Timeout:
    timeout = http.timeout
    read = None if timeout.read is None else max(timeout.read, TRANSFER_READ_S)
    return httpx.Timeout(timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


@dataclass(slots=True)
class _Sent:
    """What a download's headers say about the version being sent."""

    path: str
    version: int
    sha256: str
    size: int

    @classmethod
    def of(cls, path: str, response: httpx.Response) -> _Sent:
        try:
            return cls(
                drive_path(path),
                int(response.headers["x-drive-version"]),
                response.headers["etag"].strip('"'),
                int(response.headers["content-length"]),
            )
        except (KeyError, ValueError) as error:
            raise InvalidResponse(
                f"GET {response.request.url.path} answered without the Drive's headers "
                "(ETag, X-Drive-Version, Content-Length)",
                details={"status": response.status_code},
            ) from error


class _Checker:
    """Hashes a download as it is written; ``check`` compares with what the server said."""

    def __init__(self, sent: _Sent) -> None:
        self.sent = sent
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def check(self) -> DriveDownload:
        sent = self.sent
        if self.size != sent.size or self._hash.hexdigest() != sent.sha256:
            raise InvalidResponse(
                f"the download of {sent.path!r} (version {sent.version}) does not match its "
                f"sha256 or size: got {self.size} bytes, expected {sent.size}",
                details={"path": sent.path, "version": sent.version},
            )
        return DriveDownload(
            path=sent.path, version=sent.version, sha256=sent.sha256, size=sent.size
        )


def _temporary_next_to(target: Path) -> tuple[IO[bytes], Path]:
    """A new file in ``target``'s folder, renamed over it once the download is checked."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    return os.fdopen(handle, "wb"), Path(name)


# -- blocking ------------------------------------------------------------------------------------


class DriveBytes(ClosingIterator[bytes]):
    """The content of a Drive file as it arrives (``Drive.iter_bytes``); use it in a ``with``
    block or iterate to the end so that its connection is closed. ``version``, ``sha256`` and
    ``size`` are set once the answer started."""

    def __init__(self, client: Client, call: Call[None], path: str) -> None:
        self._client = client
        self._call = call
        self._path = path
        self.sent: _Sent | None = None
        self._items = self._run()

    def _run(self) -> Generator[bytes]:
        client, call = self._client, self._call
        try:
            with client._http.stream(
                call.method,
                call.path,
                params=call.params,
                headers=headers_for(client._connection, call),
                timeout=_transfer_timeout(client._http),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _read(response, call)
                self.sent = _Sent.of(self._path, response)
                yield from response.iter_bytes(CHUNK)
        except httpx.TransportError as error:
            raise connection_failed(client.base_url, error) from error


class Drive:
    """The Drives of this key's space (``client.drive``); ``agent_id=None``: the Space Drive."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self, prefix: str | None = None, *, agent_id: str | None = None, recursive: bool = False
    ) -> list[DriveEntry]:
        """The folders and files directly in the folder ``prefix`` (default: the root),
        folders first; with ``recursive`` every file below it."""
        return self._client._call(_list(agent_id, prefix, recursive))

    def iter_bytes(
        self, path: str, *, agent_id: str | None = None, version: int | None = None
    ) -> DriveBytes:
        """The content of ``path`` (``version``: an older one), chunk by chunk."""
        return DriveBytes(self._client, _download(agent_id, path, version), path)

    def read(self, path: str, *, agent_id: str | None = None, version: int | None = None) -> bytes:
        """The whole content of ``path`` (prefer ``download`` or ``iter_bytes`` for big files)."""
        with self.iter_bytes(path, agent_id=agent_id, version=version) as chunks:
            return b"".join(chunks)

    def download(
        self,
        path: str,
        to_file: Destination,
        *,
        agent_id: str | None = None,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> DriveDownload:
        """Stream ``path`` into ``to_file`` (a file name or a binary file object) and check
        its sha256. A file name is written through a temporary file renamed at the end, so a
        failed download leaves nothing behind."""
        with self.iter_bytes(path, agent_id=agent_id, version=version) as chunks:
            if isinstance(to_file, str | os.PathLike):
                target = Path(to_file)
                out, temporary = _temporary_next_to(target)
                try:
                    with out:
                        done = _write_all(chunks, out, progress)
                    temporary.replace(target)
                finally:
                    temporary.unlink(missing_ok=True)
                return done
            return _write_all(chunks, to_file, progress)

    def write(
        self,
        path: str,
        data: UploadData,
        *,
        agent_id: str | None = None,
        progress: Progress | None = None,
    ) -> DriveEntry:
        """Store ``data`` (bytes or a binary file object, streamed) as the next version of
        ``path``; writing the content it already holds adds no version."""
        client = self._client
        call = _upload(agent_id, path)
        headers = _upload_headers(headers_for(client._connection, call), _size_of(data))
        try:
            response = client._http.request(
                "PUT",
                call.path,
                content=_chunks(data, progress),
                headers=headers,
                timeout=_transfer_timeout(client._http),
            )
        except httpx.TransportError as error:
            raise connection_failed(client.base_url, error) from error
        return _read(response, call)

    def delete(self, path: str, *, agent_id: str | None = None) -> DriveEntry:
        """Delete ``path``: a new version that is a deletion (restore an earlier one to undo)."""
        return self._client._call(_delete(agent_id, path))

    def history(
        self,
        path: str,
        *,
        agent_id: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        cursor: str | None = None,
    ) -> Page[DriveVersion]:
        """The versions of ``path``, newest first, with who made each (deletions included)."""
        return self._client._call(_history(agent_id, path, limit, before, cursor))

    def diff(
        self,
        path: str,
        from_version: int,
        to_version: int | None = None,
        *,
        agent_id: str | None = None,
    ) -> DriveDiff:
        """A unified diff from ``from_version`` to ``to_version`` (default: the latest)."""
        return self._client._call(_diff(agent_id, path, from_version, to_version))

    def restore(self, path: str, version: int, *, agent_id: str | None = None) -> DriveEntry:
        """A new version of ``path`` with the content of ``version``."""
        return self._client._call(_restore(agent_id, path, version))


def _write_all(chunks: DriveBytes, out: IO[bytes], progress: Progress | None) -> DriveDownload:
    checker: _Checker | None = None
    for chunk in chunks:
        if checker is None:
            assert chunks.sent is not None
            checker = _Checker(chunks.sent)
        out.write(chunk)
        checker.update(chunk)
        if progress is not None:
            progress(len(chunk))
    if checker is None:  # an empty file: the loop never ran
        assert chunks.sent is not None
        checker = _Checker(chunks.sent)
    return checker.check()


# -- async ---------------------------------------------------------------------------------------


class AsyncDriveBytes(AsyncClosingIterator[bytes]):
    """The content of a Drive file as it arrives (``AsyncDrive.iter_bytes``); use it in an
    ``async with`` block or iterate to the end."""

    def __init__(self, client: AsyncClient, call: Call[None], path: str) -> None:
        self._client = client
        self._call = call
        self._path = path
        self.sent: _Sent | None = None
        self._items = self._run()

    async def _run(self) -> AsyncGenerator[bytes]:
        client, call = self._client, self._call
        try:
            async with client._http.stream(
                call.method,
                call.path,
                params=call.params,
                headers=headers_for(client._connection, call),
                timeout=_transfer_timeout(client._http),
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _read(response, call)
                self.sent = _Sent.of(self._path, response)
                async for chunk in response.aiter_bytes(CHUNK):
                    yield chunk
        except httpx.TransportError as error:
            raise connection_failed(client.base_url, error) from error


class AsyncDrive:
    """The Drives of this key's space (``AsyncClient.drive``); ``agent_id=None``: the Space
    Drive."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(
        self, prefix: str | None = None, *, agent_id: str | None = None, recursive: bool = False
    ) -> list[DriveEntry]:
        """The folders and files directly in the folder ``prefix`` (default: the root),
        folders first; with ``recursive`` every file below it."""
        return await self._client._call(_list(agent_id, prefix, recursive))

    def iter_bytes(
        self, path: str, *, agent_id: str | None = None, version: int | None = None
    ) -> AsyncDriveBytes:
        """The content of ``path`` (``version``: an older one), chunk by chunk."""
        return AsyncDriveBytes(self._client, _download(agent_id, path, version), path)

    async def read(
        self, path: str, *, agent_id: str | None = None, version: int | None = None
    ) -> bytes:
        """The whole content of ``path`` (prefer ``download`` or ``iter_bytes`` for big files)."""
        async with self.iter_bytes(path, agent_id=agent_id, version=version) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def download(
        self,
        path: str,
        to_file: Destination,
        *,
        agent_id: str | None = None,
        version: int | None = None,
        progress: Progress | None = None,
    ) -> DriveDownload:
        """Stream ``path`` into ``to_file`` (a file name or a binary file object) and check
        its sha256; a file name is written through a temporary file renamed at the end."""
        async with self.iter_bytes(path, agent_id=agent_id, version=version) as chunks:
            if isinstance(to_file, str | os.PathLike):
                target = Path(to_file)
                out, temporary = await anyio.to_thread.run_sync(_temporary_next_to, target)
                try:
                    with out:
                        done = await _async_write_all(chunks, out, progress)
                    await anyio.to_thread.run_sync(temporary.replace, target)
                finally:
                    temporary.unlink(missing_ok=True)
                return done
            return await _async_write_all(chunks, to_file, progress)

    async def write(
        self,
        path: str,
        data: UploadData,
        *,
        agent_id: str | None = None,
        progress: Progress | None = None,
    ) -> DriveEntry:
        """Store ``data`` (bytes or a binary file object, read in a thread and streamed) as
        the next version of ``path``; writing the content it already holds adds no version."""
        client = self._client
        call = _upload(agent_id, path)
        headers = _upload_headers(headers_for(client._connection, call), _size_of(data))
        try:
            response = await client._http.request(
                "PUT",
                call.path,
                content=_async_chunks(data, progress),
                headers=headers,
                timeout=_transfer_timeout(client._http),
            )
        except httpx.TransportError as error:
            raise connection_failed(client.base_url, error) from error
        return _read(response, call)

    async def delete(self, path: str, *, agent_id: str | None = None) -> DriveEntry:
        """Delete ``path``: a new version that is a deletion (restore an earlier one to undo)."""
        return await self._client._call(_delete(agent_id, path))

    async def history(
        self,
        path: str,
        *,
        agent_id: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        cursor: str | None = None,
    ) -> Page[DriveVersion]:
        """The versions of ``path``, newest first, with who made each (deletions included)."""
        return await self._client._call(_history(agent_id, path, limit, before, cursor))

    async def diff(
        self,
        path: str,
        from_version: int,
        to_version: int | None = None,
        *,
        agent_id: str | None = None,
    ) -> DriveDiff:
        """A unified diff from ``from_version`` to ``to_version`` (default: the latest)."""
        return await self._client._call(_diff(agent_id, path, from_version, to_version))

    async def restore(self, path: str, version: int, *, agent_id: str | None = None) -> DriveEntry:
        """A new version of ``path`` with the content of ``version``."""
        return await self._client._call(_restore(agent_id, path, version))


async def _async_write_all(
    chunks: AsyncDriveBytes, out: IO[bytes], progress: Progress | None
) -> DriveDownload:
    checker: _Checker | None = None
    async for chunk in chunks:
        if checker is None:
            assert chunks.sent is not None
            checker = _Checker(chunks.sent)
        await anyio.to_thread.run_sync(out.write, chunk)
        checker.update(chunk)
        if progress is not None:
            progress(len(chunk))
    if checker is None:
        assert chunks.sent is not None
        checker = _Checker(chunks.sent)
    return checker.check()
