"""The HTTP preview proxy: one request to a server inside an agent's computer, and its answer.

The computer's port is a plain byte stream (``Sandbox.connect_port``). The request goes out as
HTTP/1.1 with ``Connection: close``, the original method, body and end-to-end headers, and the
answer is parsed with h11 (chunked bodies, HTTP/1.0 servers, ``HEAD``) and streamed back as it
arrives. Never forwarded: the caller's ``Authorization`` (the API key is not the page's
business), the preview cookie and query parameter, and hop-by-hop headers.

Previews are served on the API's own origin: a page the agent serves can run script there.
Browsers reach them through signed links (``ComputerService.preview_link``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final

import anyio
import h11
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from openbuda.api.errors import error_response
from openbuda.ports import PortStream

__all__ = ["PREVIEW_COOKIE", "PREVIEW_PARAM", "ProxyTarget", "proxy"]

PREVIEW_PARAM: Final = "openbuda_preview"
"""The query parameter of a signed preview link."""
PREVIEW_COOKIE: Final = "openbuda_preview"
"""The cookie a signed link sets, scoped to its port's path, for the page's own requests."""
RESPONSE_TIMEOUT_S: Final = 120.0
"""How long the server in the computer may take to start its answer (dev servers compile)."""

_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED: Final = _HOP_BY_HOP | {b"host", b"authorization", b"content-length", b"cookie"}


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    port: int
    prefix: str
    """The path the preview of this port lives under (``/v1/agents/…/computer/ports/8000``)."""
    target: bytes
    """The request target inside the computer: path and query (``/app.js?v=2``)."""


def target_of(request: Request, prefix: str, path: str) -> bytes:
    """The path below ``prefix`` as the client sent it (still percent-encoded), and the query
    without the preview token."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    encoded = prefix.encode()
    inside = raw.startswith(encoded + b"/")
    rest = raw[len(encoded) :] if inside else ("/" + path).encode()
    query = b"&".join(
        part
        for part in request.url.query.encode().split(b"&")
        if part and not part.startswith(PREVIEW_PARAM.encode() + b"=")
    )
    return rest + (b"?" + query if query else b"")


def _cookies_without_ours(header: str) -> str:
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and part.strip().split("=", 1)[0] != PREVIEW_COOKIE
    ]
    return "; ".join(kept)


def _request_headers(
    request: Request, target: ProxyTarget, body: bytes
) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = [(b"host", f"localhost:{target.port}".encode())]
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"cookie":
            cookies = _cookies_without_ours(value.decode("latin-1"))
            if cookies:
                headers.append((b"cookie", cookies.encode("latin-1")))
        elif lowered not in _NOT_FORWARDED and not lowered.startswith(b"x-forwarded-"):
            headers.append((lowered, value))
    client = request.client.host if request.client else ""
    headers += [
        (b"connection", b"close"),
        (b"x-forwarded-for", client.encode()),
        (b"x-forwarded-proto", request.url.scheme.encode()),
        (b"x-forwarded-host", (request.headers.get("host") or "").encode("latin-1")),
        (b"x-forwarded-prefix", target.prefix.encode()),
    ]
    if body or request.method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body)).encode()))
    return headers


async def _next_event(connection: h11.Connection, stream: PortStream) -> h11.Event | None:
    """The next event of the answer (``None``: h11 paused, the exchange is over)."""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive())
        elif event is h11.PAUSED:
            return None
        else:
            assert isinstance(event, h11.Event)
            return event


async def _head(connection: h11.Connection, stream: PortStream) -> h11.Response | None:
    """The answer's status and headers, after any 1xx (``None``: closed without one)."""
    while True:
        event = await _next_event(connection, stream)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):
            return None


async def _body(connection: h11.Connection, stream: PortStream) -> AsyncIterator[bytes]:
    try:
        while True:
            event = await _next_event(connection, stream)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            else:  # EndOfMessage, ConnectionClosed: the answer is complete
                return
    except h11.RemoteProtocolError:
        return  # a broken body ends the answer; its head is already sent
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def proxy(
    request: Request,
    stream: PortStream,
    target: ProxyTarget,
    *,
    extra_headers: Mapping[str, str] | None = None,
) -> Response:
    """Send ``request`` to the port behind ``stream`` and answer with what it answers; takes
    ownership of ``stream`` (closed once the answer is sent or has failed)."""
    body = await request.body()
    connection = h11.Connection(h11.CLIENT)
    answered = False
    try:
        events: list[h11.Event] = [
            h11.Request(
                method=request.method,
                target=target.target,
                headers=_request_headers(request, target, body),
            )
        ]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await stream.send(b"".join(connection.send(event) or b"" for event in events))
        head: h11.Response | None = None
        with anyio.move_on_after(RESPONSE_TIMEOUT_S) as waited:
            head = await _head(connection, stream)
        if waited.cancelled_caught:
            return error_response(
                "gateway_timeout",
                f"the server on port {target.port} did not answer within {RESPONSE_TIMEOUT_S:g} s",
                {"port": target.port},
                status=504,
            )
        if head is None:
            return _bad_gateway(target, "closed the connection without an answer")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in head.headers
            if name.lower() not in _HOP_BY_HOP
        ]
        response = StreamingResponse(_body(connection, stream), status_code=head.status_code)
        response.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        for name, value in (extra_headers or {}).items():
            response.raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        answered = True
        return response
    except (h11.RemoteProtocolError, h11.LocalProtocolError) as error:
        return _bad_gateway(target, f"did not speak HTTP/1.1 ({error})")
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return _bad_gateway(target, "closed the connection")
    finally:
        if not answered:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()


def _bad_gateway(target: ProxyTarget, what: str) -> Response:
    return error_response(
        "bad_gateway",
        f"the server on port {target.port} in the computer {what}",
        {"port": target.port},
        status=502,
    )


def nothing_listens(port: int, message: str) -> Response:
    """The answer when no server listens on ``port`` in the computer."""
    return error_response("bad_gateway", message, {"port": port}, status=502)
