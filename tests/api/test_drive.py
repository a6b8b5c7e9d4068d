"""Drive over HTTP: both Drives' file routes (streamed up and down), listings, deletions,
history, diffs, restores, limits (413 ``too_large`` / ``quota_exceeded``), tenancy, saving a
session, and the path traversal corpus — sent raw, byte for byte, both to the app in-process
and to a real uvicorn server."""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest
from tests.api.conftest import OWNER_KEY, Api, assert_error, make_api
from tests.client.live_server import API_KEY, LiveServer, live_server

from openbuda.ports import Store
from openbuda.testing import ScriptedModel, reply

pytestmark = pytest.mark.anyio

SPACE = "/v1/space/drive"

TRAVERSAL: list[str] = [
    # '..' in every position, literal and percent-encoded (once, in either case)
    "..",
    "../x",
    "../../etc/passwd",
    "a/..",
    "a/../b",
    "a/b/../../..",
    "%2e%2e",
    "%2E%2E/x",
    "a/%2e%2e/b",
    ".%2e/x",
    "%2e%2e%2fx",
    "a%2f%2e%2e%2f%2e%2e%2fx",
    # encoded twice: after one decoding the server still sees encoded dots and slashes
    "%252e%252e",
    "%252e%252e%252fx",
    "a/%252E%252E/b",
    "%25%32%65%25%32%65",
    # absolute
    "/etc/passwd",
    "%2fetc%2fpasswd",
    # backslashes
    "..\\x",
    "a\\b",
    "%5c",
    "..%5cx",
    "%255c..",
    # NUL and other control characters
    "%00",
    "a%00b",
    "x.txt%00.png",
    "%0a",
    "a%1fb",
    # bytes that are not UTF-8 (decoded to U+FFFD)
    "%ff",
    "a/%c0%ae%c0%ae/b",
    # look-alike dots: fullwidth, one-dot and two-dot leaders
    "%EF%BC%8E%EF%BC%8E",
    "x/%EF%BC%8E%EF%BC%8E/y",
    "%EF%BC%8E",
    "%E2%80%A5",
    "%E2%80%A4%E2%80%A4/x",
    # empty and dot segments
    "",
    "a//b",
    "a/",
    ".",
    "./a",
    "a/./b",
    "%2e",
    # too long
    "a" * 256,
    "d/" + "b" * 300,
    "/".join(["c" * 200] * 21),
]


async def _put(
    client: httpx.AsyncClient, path: str, content: bytes, base: str = SPACE
) -> httpx.Response:
    return await client.put(
        f"{base}/files/{path}",
        content=content,
        headers={"content-type": "application/octet-stream"},
    )


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- round trips ---------------------------------------------------------------------------------


async def test_put_then_get_streams_a_multi_mib_file_both_ways(api: Api) -> None:
    agent = await api.agent()
    base = f"/v1/agents/{agent['id']}/drive"
    data = os.urandom(5 * 1024 * 1024 + 17)
    created = await api.client.put(
        f"{base}/files/data/blob.bin",
        content=_chunked(data, 64 * 1024),  # chunked: no Content-Length
    )
    assert created.status_code == 201, created.text
    entry = created.json()
    digest = hashlib.sha256(data).hexdigest()
    assert entry == {
        "path": "data/blob.bin",
        "kind": "file",
        "size": len(data),
        "sha256": digest,
        "version": 1,
        "updated_at": entry["updated_at"],
        "deleted": False,
    }

    async with api.client.stream("GET", f"{base}/files/data/blob.bin") as response:
        assert response.status_code == 200
        chunks = [chunk async for chunk in response.aiter_raw()]
    assert b"".join(chunks) == data
    assert len(chunks) > 1  # streamed, not one body
    headers = response.headers
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(data))
    assert headers["etag"] == f'"{digest}"'
    assert headers["x-drive-version"] == "1"
    assert headers["x-content-type-options"] == "nosniff"
    assert "blob.bin" in headers["content-disposition"]

    again = await api.client.put(f"{base}/files/data/blob.bin", content=data)
    assert again.status_code == 200 and again.json()["version"] == 1  # same content: no version
    head = await api.client.head(f"{base}/files/data/blob.bin")
    assert head.status_code == 200 and head.content == b""
    assert (
        head.headers["content-length"] == str(len(data)) and head.headers["etag"] == f'"{digest}"'
    )
    cached = await api.client.get(
        f"{base}/files/data/blob.bin", headers={"if-none-match": f'"{digest}"'}
    )
    assert cached.status_code == 304 and cached.content == b""
    # the space's Drive is another Drive
    assert_error(await api.client.get(f"{SPACE}/files/data/blob.bin"), 404, "not_found")


async def test_versions_types_and_names_on_the_space_drive(api: Api) -> None:
    first = await _put(api.client, "notes/plan.md", b"# Plan\nstep one\n")
    assert first.status_code == 201
    second = await _put(api.client, "notes/plan.md", b"# Plan\nstep one\nstep two\n")
    assert second.status_code == 200 and second.json()["version"] == 2
    latest = await api.client.get(f"{SPACE}/files/notes/plan.md")
    assert latest.content == b"# Plan\nstep one\nstep two\n"
    assert latest.headers["content-type"].startswith("text/markdown")
    assert latest.headers["x-drive-version"] == "2"
    old = await api.client.get(f"{SPACE}/files/notes/plan.md", params={"version": 1})
    assert old.content == b"# Plan\nstep one\n" and old.headers["x-drive-version"] == "1"
    assert_error(
        await api.client.get(f"{SPACE}/files/notes/plan.md", params={"version": 3}),
        404,
        "not_found",
    )
    assert_error(
        await api.client.get(f"{SPACE}/files/notes/plan.md", params={"version": 0}),
        422,
        "validation_error",
    )

    # names: spaces, unicode (NFC), '%' and '?' survive the URL; compressed names are opaque
    for name in ("my report (final).pdf", "café/naïve.txt", "100% done?.txt", "a.tar.gz"):
        url_path = httpx.URL("http://x/" + name.replace("%", "%25").replace("?", "%3F")).raw_path
        response = await _put(api.client, url_path.decode()[1:], name.encode())
        assert response.status_code == 201, (name, response.text)
        assert response.json()["path"] == name
        read = await api.client.get(f"{SPACE}/files/{url_path.decode()[1:]}")
        assert read.content == name.encode(), name
    gz = await api.client.get(f"{SPACE}/files/a.tar.gz")
    assert gz.headers["content-type"] == "application/octet-stream"
    decomposed = await _put(api.client, "cafe\u0301.txt", b"nfc")
    assert decomposed.json()["path"] == "caf\u00e9.txt"


async def test_listing_folders_and_files_with_a_prefix(api: Api) -> None:
    for path, size in (("a.txt", 3), ("docs/x.md", 5), ("docs/y.md", 7), ("docs/sub/z.md", 11)):
        assert (await _put(api.client, path, b"z" * size)).status_code == 201
    root = (await api.client.get(f"{SPACE}/files")).json()
    assert root["next_cursor"] is None
    assert [(e["kind"], e["path"], e["size"]) for e in root["items"]] == [
        ("dir", "docs", 23),
        ("file", "a.txt", 3),
    ]
    folder = root["items"][0]
    assert folder["sha256"] is None and folder["version"] is None and not folder["deleted"]
    docs = (await api.client.get(f"{SPACE}/files", params={"prefix": "docs"})).json()["items"]
    assert [(e["kind"], e["path"]) for e in docs] == [
        ("dir", "docs/sub"),
        ("file", "docs/x.md"),
        ("file", "docs/y.md"),
    ]
    slash = (await api.client.get(f"{SPACE}/files", params={"prefix": "/docs/"})).json()
    assert slash["items"] == docs
    everything = await api.client.get(f"{SPACE}/files", params={"recursive": "true"})
    assert [e["path"] for e in everything.json()["items"]] == [
        "a.txt",
        "docs/sub/z.md",
        "docs/x.md",
        "docs/y.md",
    ]
    assert_error(
        await api.client.get(f"{SPACE}/files", params={"prefix": "nope"}), 404, "not_found"
    )
    assert_error(
        await api.client.get(f"{SPACE}/files", params={"prefix": "../docs"}), 400, "invalid_path"
    )


async def test_delete_is_a_tombstone_shown_in_history_and_restorable(api: Api) -> None:
    agent = await api.agent()
    base = f"/v1/agents/{agent['id']}/drive"
    me = (await api.client.get("/v1/me")).json()["member"]["id"]
    await _put(api.client, "f.txt", b"one\n", base)
    await _put(api.client, "f.txt", b"two\n", base)
    deleted = await api.client.delete(f"{base}/files/f.txt")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["version"] == 3
    assert deleted.json()["sha256"] is None
    assert_error(await api.client.get(f"{base}/files/f.txt"), 404, "not_found")
    assert_error(await api.client.delete(f"{base}/files/f.txt"), 404, "not_found")
    assert (await api.client.get(f"{base}/files")).json()["items"] == []
    assert (await api.client.get(f"{base}/files/f.txt", params={"version": 2})).content == b"two\n"

    history = (await api.client.get(f"{base}/versions/f.txt")).json()
    assert [(v["version"], v["op"]) for v in history["items"]] == [
        (3, "delete"),
        (2, "write"),
        (1, "write"),
    ]
    newest = history["items"][0]
    assert newest["member_id"] == me and newest["agent_id"] is None
    assert newest["sha256"] is None and newest["size"] == 0 and newest["restored_from"] is None
    assert history["next_cursor"] is None

    restored = await api.client.post(f"{base}/restore/f.txt", json={"version": 1})
    assert restored.status_code == 200, restored.text
    assert restored.json()["version"] == 4 and not restored.json()["deleted"]
    assert (await api.client.get(f"{base}/files/f.txt")).content == b"one\n"
    top = (await api.client.get(f"{base}/versions/f.txt", params={"limit": 2})).json()
    assert [v["version"] for v in top["items"]] == [4, 3]
    assert top["items"][0]["op"] == "restore" and top["items"][0]["restored_from"] == 1
    assert top["next_cursor"] == "3"
    rest = await api.client.get(
        f"{base}/versions/f.txt", params={"limit": 2, "cursor": top["next_cursor"]}
    )
    assert [v["version"] for v in rest.json()["items"]] == [2, 1]
    before = await api.client.get(f"{base}/versions/f.txt", params={"before": 2})
    assert [v["version"] for v in before.json()["items"]] == [1]
    assert_error(
        await api.client.get(f"{base}/versions/f.txt", params={"cursor": "x"}),
        400,
        "invalid_request",
    )
    assert_error(await api.client.get(f"{base}/versions/none.txt"), 404, "not_found")
    assert_error(
        await api.client.post(f"{base}/restore/f.txt", json={"version": 9}), 404, "not_found"
    )
    assert_error(
        await api.client.post(f"{base}/restore/f.txt", json={"version": "one"}),
        422,
        "validation_error",
    )
    # restoring the tombstone deletes the file again
    again = await api.client.post(f"{base}/restore/f.txt", json={"version": 3})
    assert again.json()["deleted"] is True
    assert_error(await api.client.get(f"{base}/files/f.txt"), 404, "not_found")


async def test_diff_of_text_and_binary_versions(api: Api) -> None:
    await _put(api.client, "t.txt", b"alpha\nbeta\n")
    await _put(api.client, "t.txt", b"alpha\ngamma\n")
    found = await api.client.get(f"{SPACE}/diff/t.txt", params={"from": 1})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["path"] == "t.txt" and body["from"] == 1 and body["to"] == 2
    assert body["binary"] is False
    assert body["diff"] == ("--- t.txt@1\n+++ t.txt@2\n@@ -1,2 +1,2 @@\n alpha\n-beta\n+gamma\n")
    raw = await api.client.get(
        f"{SPACE}/diff/t.txt", params={"from": 1, "to": 2}, headers={"accept": "text/x-diff"}
    )
    assert raw.headers["content-type"].startswith("text/x-diff")
    assert raw.text == body["diff"]
    same = await api.client.get(f"{SPACE}/diff/t.txt", params={"from": 2, "to": 2})
    assert same.json()["diff"] == ""

    await _put(api.client, "b.bin", b"\x00\x01\x02")
    await _put(api.client, "b.bin", b"\x00\x01\x03")
    binary = (await api.client.get(f"{SPACE}/diff/b.bin", params={"from": 1})).json()
    assert binary["binary"] is True and "differ" in binary["diff"]
    assert_error(await api.client.get(f"{SPACE}/diff/t.txt", params={"from": 5}), 404, "not_found")
    assert_error(await api.client.get(f"{SPACE}/diff/t.txt"), 422, "validation_error")


# -- limits and tenancy --------------------------------------------------------------------------


@pytest.fixture
async def small_api(store: Store, tmp_path: Path) -> AsyncIterator[Api]:
    limits = {"drive_max_file_bytes": 1000, "drive_quota_bytes": 2500}
    async for running in make_api(store, tmp_path, settings=limits):
        yield running


async def test_too_large_and_quota_exceeded_are_413(small_api: Api) -> None:
    api = small_api
    # declared too large: refused before the body is read
    error = assert_error(await _put(api.client, "big.bin", b"x" * 1001), 413, "too_large")
    assert error["details"]["max_bytes"] == 1000
    # streamed without a length: refused once the limit is passed
    streamed = await api.client.put(f"{SPACE}/files/big.bin", content=_chunked(b"x" * 5000, 300))
    assert_error(streamed, 413, "too_large")
    # the JSON body limit (1 MiB) does not apply, Drive's own limits do
    assert (await _put(api.client, "ok.bin", b"y" * 1000)).status_code == 201
    agent = await api.agent()
    assert (
        await _put(api.client, "ok.bin", b"z" * 1000, f"/v1/agents/{agent['id']}/drive")
    ).status_code == 201
    quota = assert_error(await _put(api.client, "more.bin", b"w" * 600), 413, "quota_exceeded")
    assert quota["details"] == {"quota_bytes": 2500, "used_bytes": 2000}
    assert_error(
        await api.client.put(f"{SPACE}/files/more.bin", content=_chunked(b"w" * 600, 100)),
        413,
        "quota_exceeded",
    )
    # replacing a file counts only the difference; deleting frees room
    assert (await _put(api.client, "ok.bin", b"v" * 900)).status_code == 200
    assert (await api.client.delete(f"{SPACE}/files/ok.bin")).status_code == 200
    assert (await _put(api.client, "more.bin", b"w" * 600)).status_code == 201
    names = [e["path"] for e in (await api.client.get(f"{SPACE}/files")).json()["items"]]
    assert names == ["more.bin"]


async def test_another_spaces_drives_are_404(api: Api) -> None:
    created = (await api.client.post("/v1/spaces", json={"name": "tenant-b"})).json()
    theirs = api.client_for(created["api_key"]["secret"])
    their_agent = await api.agent(theirs, name="theirs")
    base = f"/v1/agents/{their_agent['id']}/drive"
    assert (await _put(theirs, "secret.txt", b"theirs", base)).status_code == 201
    assert (await _put(theirs, "shared.txt", b"their space")).status_code == 201

    member_key = (await api.client.post("/v1/api-keys", json={"name": "m"})).json()["secret"]
    for client in (api.client, api.client_for(member_key)):
        for method, path, body in (
            ("GET", f"{base}/files", None),
            ("GET", f"{base}/files/secret.txt", None),
            ("HEAD", f"{base}/files/secret.txt", None),
            ("PUT", f"{base}/files/secret.txt", b"mine"),
            ("DELETE", f"{base}/files/secret.txt", None),
            ("GET", f"{base}/versions/secret.txt", None),
            ("GET", f"{base}/diff/secret.txt?from=1", None),
        ):
            response = await client.request(method, path, content=body)
            assert response.status_code == 404, (method, path, response.text)
            if method != "HEAD":
                assert_error(response, 404, "not_found")
            assert "theirs" not in response.text
        restore = await client.post(f"{base}/restore/secret.txt", json={"version": 1})
        assert_error(restore, 404, "not_found")
        # the Space Drive is each key's own space's
        assert_error(await client.get(f"{SPACE}/files/shared.txt"), 404, "not_found")
    assert (await theirs.get(f"{base}/files/secret.txt")).content == b"theirs"
    assert_error(await api.client.get("/v1/agents/agt_nope/drive/files"), 404, "not_found")
    assert_error(await api.client.get("/v1/agents/bad%20id/drive/files"), 404, "not_found")
    assert_error(await api.client_for(None).get(f"{SPACE}/files"), 401, "unauthorized")


# -- saving sessions -----------------------------------------------------------------------------


async def test_save_session_writes_markdown_to_the_agents_or_the_space_drive(api: Api) -> None:
    agent = await api.agent()
    session = await api.session(agent["id"], title="planning")
    api.model.add(reply("The answer is 4."))
    accepted = await api.send(session["id"], "What is 2 + 2?")
    await api.wait_task(accepted["task_id"])

    saved = await api.client.post(
        f"/v1/sessions/{session['id']}/save", json={"path": "sessions/planning.md"}
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["path"] == "sessions/planning.md" and saved.json()["version"] == 1
    text = (await api.client.get(f"/v1/agents/{agent['id']}/drive/files/sessions/planning.md")).text
    assert "What is 2 + 2?" in text and "The answer is 4." in text
    history = (
        await api.client.get(f"/v1/agents/{agent['id']}/drive/versions/sessions/planning.md")
    ).json()
    assert history["items"][0]["member_id"] is not None

    in_space = await api.client.post(
        f"/v1/sessions/{session['id']}/save",
        json={"path": "result.md", "drive": "space", "task_id": accepted["task_id"]},
    )
    assert in_space.status_code == 200, in_space.text
    assert "The answer is 4." in (await api.client.get(f"{SPACE}/files/result.md")).text

    assert_error(
        await api.client.post(f"/v1/sessions/{session['id']}/save", json={"path": "../x.md"}),
        400,
        "invalid_path",
    )
    assert_error(
        await api.client.post("/v1/sessions/ses_nope/save", json={"path": "x.md"}),
        404,
        "not_found",
    )
    assert_error(
        await api.client.post(
            f"/v1/sessions/{session['id']}/save", json={"path": "x.md", "task_id": "tsk_nope"}
        ),
        404,
        "not_found",
    )
    assert_error(
        await api.client.post(
            f"/v1/sessions/{session['id']}/save", json={"path": "x.md", "drive": "elsewhere"}
        ),
        422,
        "validation_error",
    )


# -- the traversal corpus ------------------------------------------------------------------------


async def _raw_asgi(api: Api, method: str, raw_path: str, body: bytes) -> tuple[int, bytes]:
    """Call the app as a server would for the request line ``METHOD raw_path``: ``path`` is
    ``raw_path`` percent-decoded once (as uvicorn does), nothing normalised."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"openbuda.test"),
            (b"authorization", f"Bearer {OWNER_KEY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("openbuda.test", 80),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await api.app(scope, receive, send)
    return status, b"".join(chunks)


def _requests(base: str) -> Iterator[tuple[str, str, bytes]]:
    for path in TRAVERSAL:
        yield "PUT", f"{base}/files/{path}", b"owned"
        yield "GET", f"{base}/files/{path}", b""
        yield "DELETE", f"{base}/files/{path}", b""
        yield "GET", f"{base}/versions/{path}", b""
    for path in ("../x", "%2e%2e/x", "%252e%252e/x", "a%00"):
        yield "POST", f"{base}/restore/{path}", b'{"version": 1}'
        yield "GET", f"{base}/diff/{path}?from=1", b""


def _check_refused(method: str, raw: str, status: int, body: bytes) -> None:
    assert status == 400, (method, raw, status, body[:300])
    assert b'"code":"invalid_path"' in body, (method, raw, body[:300])


async def test_the_traversal_corpus_is_refused_in_process(api: Api) -> None:
    agent = await api.agent()
    await _put(api.client, "x", b"a file next to the refused ones")
    for base in (SPACE, f"/v1/agents/{agent['id']}/drive"):
        for method, raw, body in _requests(base):
            if "?" in raw:
                continue  # the query is not part of this request line's path
            status, answer = await _raw_asgi(api, method, raw, body)
            _check_refused(method, raw, status, answer)
    listing = (await api.client.get(f"{SPACE}/files", params={"recursive": "true"})).json()
    assert [e["path"] for e in listing["items"]] == ["x"]
    agent_files = (await api.client.get(f"/v1/agents/{agent['id']}/drive/files")).json()
    assert agent_files["items"] == []


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path / "server", ScriptedModel()) as running:
        yield running


def test_the_traversal_corpus_is_refused_by_a_real_server(live: LiveServer, tmp_path: Path) -> None:
    """Raw request lines over a socket: nothing between the test and uvicorn rewrites them."""
    host, port = live.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        for method, raw, body in _requests(SPACE):
            connection.request(method, raw, body=body or None, headers=headers)
            response = connection.getresponse()
            _check_refused(method, raw, response.status, response.read())
        connection.request("GET", f"{SPACE}/files?recursive=true", headers=headers)
        listing = connection.getresponse()
        assert listing.status == 200 and listing.read() == b'{"items":[],"next_cursor":null}'
    finally:
        connection.close()
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x").exists()
