"""A local OpenAI-compatible HTTP server that answers from a script, for tests.

It serves ``POST /v1/chat/completions`` (streamed as server-sent events like OpenAI's, or as
one JSON body) and ``GET /v1/models``, records every request it receives, and can misbehave on
purpose the way real OpenAI-compatible servers (vLLM, Ollama, llama.cpp, LM Studio) do. It uses
only the standard library: ``ThreadingHTTPServer`` in a background thread.

In a test::

    from openbuda.testing.openai_server import OpenAIServer

    with OpenAIServer([{"text": "Hello!"}]) as server:
        ...  # point a client at server.base_url ("http://127.0.0.1:PORT/v1")
        assert server.requests[0].body["messages"][-1]["content"] == "Hi"

As a subprocess (it prints ``openai_server listening on <base_url>`` once it accepts
connections and stops on SIGTERM or SIGINT)::

    python -m openbuda.testing.openai_server --script script.json --port 8099

Script format (JSON)
--------------------
Either a list of replies, answered in order, or an object::

    {
      "replies": [<reply>, ...],   # answered in order, one per request
      "rules":   [<reply with "when">, ...],   # checked first, reusable, first match wins
      "default": <reply>,          # when no rule matches and "replies" is used up
      "echo":    true              # shorthand for "default": {"text": "echo: {last_user}"}
    }

A request that finds nothing to answer with gets HTTP 500 ``script exhausted``.

Responders
----------
A script may also hold a *responder*: a function from the request's JSON body to a reply (or
``None`` to fall through to the default), consulted after the rules and the queued replies.
When the reply must depend only on what the request says, not on the order requests arrive
in, a responder does it: many concurrent conversations, or a conversation whose model call is
made again after a crash, get the answer their messages call for. In code,
``Script(responder=fn)``; on the command line ``--responder package.module:function`` (the
module must be importable: set ``PYTHONPATH``).

A reply is an object with any of these keys:

``text``
    The assistant's text. ``null`` sends ``"content": null``.
``tool_calls``
    A list of ``{"name", "arguments", "id"}``. ``arguments`` given as an object is sent as its
    JSON text; given as a string it is sent verbatim (so ``"{not json"`` sends malformed
    arguments and ``"\\"{\\\\\\"a\\\\\\": 1}\\""`` a JSON string of an object). ``id`` defaults
    to ``call_<n>``; ``null`` omits it. ``name`` may be ``"$first_tool"``: the first tool the
    request offers.
``function_call``
    ``{"name", "arguments"}``: the legacy single ``function_call`` field (beside or instead of
    ``tool_calls``).
``same_index``
    ``true``: every streamed tool call delta says ``"index": 0`` (as some servers do).
``no_index``
    ``true``: streamed tool call deltas have no ``index`` at all.
``text_chunks``
    A list of strings: stream the text in exactly these chunks (e.g. ``["<think>", "…",
    "</think>", "Hi"]`` like a server streaming tokens); the text is their concatenation.
``finish_reason``
    Overrides the finish reason (``"stop"``, or ``"tool_calls"`` when there are tool calls);
    ``null`` omits it.
``usage``
    ``{"prompt_tokens", "completion_tokens"}``; default ``{"prompt_tokens": 10, ...}``.
``status`` / ``error``
    Answer with this HTTP status and an OpenAI-style error body, e.g.
    ``{"status": 429, "error": {"message": "slow down", "type": "rate_limit_error"}}``.
``headers``
    Extra response headers, e.g. ``{"retry-after": "0"}``.
``delay``
    Seconds to wait before answering (to provoke client timeouts).
``chunk_delay``
    Seconds to wait between streamed chunks.
``chunk_size``
    Characters of text or arguments per streamed chunk (default 4).
``raw``
    Send this text as the body (status 200 unless ``status`` is set, content type JSON), e.g.
    a body that is not JSON, or a broken SSE stream when the request streams.
``drop``
    ``true``: close the connection without answering.
``when``
    Only in ``rules``: all of ``{"user_contains": str, "last_role": str, "tool_offered": str}``
    that are given must match (``user_contains`` is case-insensitive, on the last user message).

Strings in ``text`` and in ``arguments`` may use ``{last_user}`` (the last user message),
``{last_tool_result}`` (the content of the last tool message) and ``{model}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, cast

__all__ = [
    "OpenAIServer",
    "RecordedRequest",
    "Reply",
    "Responder",
    "Script",
    "load_responder",
    "main",
]

Reply = dict[str, Any]
Responder = Callable[[Mapping[str, Any]], Reply | None]
"""A reply computed from the request's JSON body (``None``: no answer, use the default)."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: dict[str, Any] | None
    """The parsed JSON body (``None`` for a GET or a body that is not a JSON object)."""


class Script:
    """What the server answers: matching rules, queued replies, a responder and a default.
    Thread-safe (a responder is called outside the lock, from many threads at once)."""

    def __init__(
        self,
        replies: Sequence[Reply] = (),
        *,
        rules: Sequence[Reply] = (),
        default: Reply | None = None,
        responder: Responder | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._replies: list[Reply] = [dict(reply) for reply in replies]
        self._rules: list[Reply] = [dict(rule) for rule in rules]
        self._default = default
        self.responder = responder

    @classmethod
    def from_json(cls, data: object) -> Script:
        """Build a script from its JSON form (see the module docstring)."""
        if isinstance(data, list):
            return cls(_replies(cast(list[object], data), "script"))
        if not isinstance(data, dict):
            raise ValueError("a script is a JSON list of replies or an object")
        spec = cast(dict[str, object], data)
        unknown = set(spec) - {"replies", "rules", "default", "echo"}
        if unknown:
            raise ValueError(f"unknown script keys: {sorted(unknown)!r}")
        default = spec.get("default")
        if default is not None and not isinstance(default, dict):
            raise ValueError("script 'default' must be an object")
        if default is None and spec.get("echo"):
            default = {"text": "echo: {last_user}"}
        replies = spec.get("replies", [])
        rules = spec.get("rules", [])
        if not isinstance(replies, list) or not isinstance(rules, list):
            raise ValueError("script 'replies' and 'rules' must be lists")
        return cls(
            _replies(cast(list[object], replies), "replies"),
            rules=_replies(cast(list[object], rules), "rules"),
            default=cast(Reply | None, default),
        )

    def add(self, *replies: Reply) -> None:
        """Queue more replies."""
        with self._lock:
            self._replies.extend(dict(reply) for reply in replies)

    @property
    def pending(self) -> int:
        """Queued replies not yet used."""
        with self._lock:
            return len(self._replies)

    def next_reply(self, body: Mapping[str, Any]) -> Reply | None:
        with self._lock:
            for rule in self._rules:
                if _matches(rule.get("when", {}), body):
                    return rule
            if self._replies:
                return self._replies.pop(0)
        if self.responder is not None:
            reply = self.responder(body)
            if reply is not None:
                return reply
        return self._default


class OpenAIServer:
    """The server, run in a background thread by ``with OpenAIServer(script) as server``."""

    def __init__(
        self,
        script: Script | Sequence[Reply] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        model: str = "scripted",
    ) -> None:
        self.script = script if isinstance(script, Script) else Script(script)
        self.api_key = api_key
        """When set, requests without ``Authorization: Bearer <api_key>`` get HTTP 401."""
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, for ``OPENAI_BASE_URL``."""
        host, port = self.address
        return f"http://{host}:{port}/v1"

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def add(self, *replies: Reply) -> None:
        """Queue more replies."""
        self.script.add(*replies)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received so far."""
        return [
            r.body for r in list(self.requests) if r.path.endswith("/chat/completions") and r.body
        ]

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("the server is already running")
        self._httpd = _HTTPServer((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        thread.join()
        httpd.close_connections()
        httpd.server_close()  # joins the handler threads
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        self.requests.append(request)


# ---------------------------------------------------------------------------------------------
# HTTP


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 256  # the default 5 drops connections when many clients call at once

    def __init__(self, address: tuple[str, int], owner: OpenAIServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def _http(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        self._http.track(self.connection, add=True)

    def finish(self) -> None:
        self._http.track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        owner = self._http.owner
        owner._record(RecordedRequest("GET", self.path, self._headers(), None))
        if not self._authorized():
            return
        if self.path.rstrip("/").endswith("/models"):
            created = 0
            data = [
                {"id": owner.model, "object": "model", "created": created, "owned_by": "openbuda"}
            ]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error(404, f"no route for GET {self.path}", "not_found_error")

    def do_POST(self) -> None:
        owner = self._http.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed: object = json.loads(raw or b"null")
        except ValueError:
            parsed = None
        body = cast(dict[str, Any], parsed) if isinstance(parsed, dict) else None
        owner._record(RecordedRequest("POST", self.path, self._headers(), body))
        if not self._authorized():
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error(404, f"no route for POST {self.path}", "not_found_error")
            return
        if body is None or not isinstance(body.get("messages"), list):
            self._send_error(
                400, "the body must be a JSON object with 'messages'", "invalid_request_error"
            )
            return
        try:
            reply = owner.script.next_reply(body)
        except Exception as error:  # a responder's bug: say so instead of dropping the line
            self._send_error(500, f"openai_server: responder failed: {error!r}", "server_error")
            return
        if reply is None:
            self._send_error(500, "openai_server: script exhausted", "server_error")
            return
        try:
            self._answer(body, reply)
        except OSError:  # the client went away (timed out, cancelled)
            self.close_connection = True

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _authorized(self) -> bool:
        key = self._http.owner.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
        return False

    # -- answers ----------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], reply: Reply) -> None:
        delay = float(reply.get("delay") or 0)
        if delay and self._http.stopping.wait(delay):
            return  # the server is stopping
        if reply.get("drop"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        headers = cast(dict[str, str], reply.get("headers") or {})
        if "raw" in reply:
            data = str(reply["raw"]).encode()
            status = int(reply.get("status", 200))
            if body.get("stream"):
                self._start_stream(status, headers)
                self._write(data)
                self.close_connection = True
            else:
                self._send_bytes(status, data, "application/json", headers)
            return
        if "status" in reply or "error" in reply:
            status = int(reply.get("status", 500))
            error = cast(dict[str, Any], reply.get("error") or {})
            self._send_error(
                status,
                str(error.get("message", f"scripted error {status}")),
                str(
                    error.get("type", "server_error" if status >= 500 else "invalid_request_error")
                ),
                cast(str | None, error.get("code")),
                headers,
            )
            return
        message = _Message.build(body, reply, self._http.owner.model)
        if body.get("stream"):
            self._stream(body, reply, message, headers)
        else:
            self._send_json(200, message.completion(), headers)

    def _stream(
        self, body: dict[str, Any], reply: Reply, message: _Message, headers: dict[str, str]
    ) -> None:
        chunk_delay = float(reply.get("chunk_delay") or 0)
        self._start_stream(200, headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in message.chunks(int(reply.get("chunk_size") or 4), include_usage):
            if chunk_delay and self._http.stopping.wait(chunk_delay):
                return
            try:
                self._write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            except OSError:  # the client went away
                return
        self._write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(
        self,
        status: int,
        message: str,
        error_type: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        error = {"message": message, "type": error_type, "param": None, "code": code}
        self._send_json(status, {"error": error}, headers)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] | None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self._write(data)
        except OSError:
            self.close_connection = True


# ---------------------------------------------------------------------------------------------
# Building replies


@dataclass
class _Message:
    model: str
    content: str | None
    tool_calls: list[dict[str, Any]]
    """``{"id": str | None, "name": str, "arguments": str}``"""
    function_call: dict[str, str] | None
    finish_reason: str | None
    usage: dict[str, int]
    same_index: bool = False
    no_index: bool = False
    text_chunks: list[str] = field(default_factory=list[str])
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, body: Mapping[str, Any], reply: Reply, model: str) -> _Message:
        values = _template_values(body, model)
        if "text_chunks" in reply and "text" not in reply:
            reply = {**reply, "text": "".join(cast(list[str], reply["text_chunks"]))}
        content = reply.get(
            "text", "" if "tool_calls" in reply or "function_call" in reply else None
        )
        if "text" in reply and reply["text"] is None:
            content = None
        elif content is not None:
            content = _fill(str(content), values)
        tool_calls: list[dict[str, Any]] = []
        for n, spec in enumerate(cast(list[dict[str, Any]], reply.get("tool_calls") or []), 1):
            name = str(spec.get("name", ""))
            if name == "$first_tool":
                name = _first_tool(body)
            call_id = spec.get("id", f"call_{n}")
            tool_calls.append(
                {
                    "id": call_id,
                    "name": name,
                    "arguments": _arguments(spec.get("arguments", {}), values),
                }
            )
        function_call = None
        if (legacy := reply.get("function_call")) is not None:
            legacy_spec = cast(dict[str, Any], legacy)
            name = str(legacy_spec.get("name", ""))
            if name == "$first_tool":
                name = _first_tool(body)
            function_call = {
                "name": name,
                "arguments": _arguments(legacy_spec.get("arguments", {}), values),
            }
        default_finish = (
            "tool_calls" if tool_calls else "function_call" if function_call else "stop"
        )
        finish_reason = reply.get("finish_reason", default_finish)
        usage = {"prompt_tokens": 10, "completion_tokens": 5}
        usage.update(cast(dict[str, int], reply.get("usage") or {}))
        return cls(
            model=str(body.get("model") or model),
            content=content,
            tool_calls=tool_calls,
            function_call=function_call,
            finish_reason=finish_reason,
            usage=usage,
            same_index=bool(reply.get("same_index")),
            no_index=bool(reply.get("no_index")),
            text_chunks=[
                _fill(str(c), values) for c in cast(list[object], reply.get("text_chunks") or [])
            ],
        )

    def _usage(self) -> dict[str, int]:
        prompt, completion = self.usage["prompt_tokens"], self.usage["completion_tokens"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    **({"id": call["id"]} if call["id"] is not None else {}),
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in self.tool_calls
            ]
        if self.function_call is not None:
            message["function_call"] = self.function_call
        return {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self._usage(),
        }

    def chunks(self, size: int, include_usage: bool) -> Iterator[dict[str, Any]]:
        size = max(size, 1)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ],
            }

        yield chunk({"role": "assistant", "content": "" if self.content is not None else None})
        if self.text_chunks:
            for text in self.text_chunks:
                yield chunk({"content": text})
        elif self.content:
            for start in range(0, len(self.content), size):
                yield chunk({"content": self.content[start : start + size]})
        for index, call in enumerate(self.tool_calls):
            position = {} if self.no_index else {"index": 0 if self.same_index else index}
            head: dict[str, Any] = {
                **position,
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            if call["id"] is not None:
                head["id"] = call["id"]
            yield chunk({"tool_calls": [head]})
            arguments: str = call["arguments"]
            for start in range(0, len(arguments), size):
                piece = {**position, "function": {"arguments": arguments[start : start + size]}}
                yield chunk({"tool_calls": [piece]})
        if self.function_call is not None:
            yield chunk({"function_call": {"name": self.function_call["name"], "arguments": ""}})
            arguments = self.function_call["arguments"]
            for start in range(0, len(arguments), size):
                yield chunk({"function_call": {"arguments": arguments[start : start + size]}})
        yield chunk({}, self.finish_reason)
        if include_usage:
            yield {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self._usage(),
            }


def _replies(items: list[object], where: str) -> list[Reply]:
    replies: list[Reply] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"every entry of {where} must be an object, got {item!r}")
        replies.append(cast(Reply, item))
    return replies


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(cast(dict[str, Any], part).get("text", ""))
            for part in cast(list[object], content)
            if isinstance(part, dict)
        ]
        return "".join(parts)
    return ""


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = cast(list[object], body.get("messages") or [])
    return [cast(dict[str, Any], m) for m in items if isinstance(m, dict)]


def _last(body: Mapping[str, Any], role: str) -> str:
    for message in reversed(_messages(body)):
        if message.get("role") == role:
            return _text_of(message.get("content"))
    return ""


def _tool_names(body: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for tool in cast(list[object], body.get("tools") or []):
        if isinstance(tool, dict):
            function = cast(dict[str, Any], tool).get("function") or {}
            names.append(str(cast(dict[str, Any], function).get("name", "")))
    return names


def _first_tool(body: Mapping[str, Any]) -> str:
    names = _tool_names(body)
    return names[0] if names else "no_tool_offered"


def _matches(when: object, body: Mapping[str, Any]) -> bool:
    if not isinstance(when, dict):
        return False
    conditions = cast(dict[str, Any], when)
    if (text := conditions.get("user_contains")) is not None and str(text).lower() not in _last(
        body, "user"
    ).lower():
        return False
    messages = _messages(body)
    if (role := conditions.get("last_role")) is not None and (
        not messages or messages[-1].get("role") != role
    ):
        return False
    return not (
        (tool := conditions.get("tool_offered")) is not None and tool not in _tool_names(body)
    )


def _template_values(body: Mapping[str, Any], model: str) -> dict[str, str]:
    return {
        "{last_user}": _last(body, "user"),
        "{last_tool_result}": _last(body, "tool"),
        "{model}": str(body.get("model") or model),
    }


def _fill(text: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _fill_all(value: object, values: Mapping[str, str]) -> object:
    if isinstance(value, str):
        return _fill(value, values)
    if isinstance(value, list):
        return [_fill_all(item, values) for item in cast(list[object], value)]
    if isinstance(value, dict):
        return {k: _fill_all(v, values) for k, v in cast(dict[str, object], value).items()}
    return value


def _arguments(arguments: object, values: Mapping[str, str]) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(_fill_all(arguments, values))


# ---------------------------------------------------------------------------------------------
# Command line


def load_responder(target: str) -> Responder:
    """The function ``module:attribute`` names (``ValueError`` when it is not callable)."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"a responder is given as 'module:function', got {target!r}")
    found: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{target!r} is not callable")
    return cast(Responder, found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openbuda.testing.openai_server",
        description="A scripted OpenAI-compatible server for tests (see the module docstring).",
    )
    parser.add_argument(
        "--script", type=Path, help="JSON script file (default: echo every request)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--model", default="scripted", help="model id listed by GET /v1/models")
    parser.add_argument(
        "--responder",
        metavar="MODULE:FUNCTION",
        help="answer with this function of the request body (see the module docstring)",
    )
    args = parser.parse_args(argv)
    if args.script is not None:
        script = Script.from_json(json.loads(args.script.read_text()))
    elif args.responder is not None:
        script = Script()
    else:
        script = Script(default={"text": "echo: {last_user}"})
    if args.responder is not None:
        script.responder = load_responder(args.responder)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with OpenAIServer(
        script, host=args.host, port=args.port, api_key=args.api_key, model=args.model
    ) as server:
        print(f"openai_server listening on {server.base_url}", flush=True)
        while not stop.wait(0.2):
            pass
    print("openai_server stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
