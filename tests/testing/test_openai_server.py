"""The scripted OpenAI-compatible server, spoken to over plain HTTP (and run as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from openbuda.testing.openai_server import OpenAIServer, Script, load_responder

CHAT = {"model": "m", "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def chat(http: httpx.Client, server: OpenAIServer, **body: Any) -> dict[str, Any]:
    response = http.post(f"{server.base_url}/chat/completions", json={**CHAT, **body})
    response.raise_for_status()
    return response.json()


def stream(http: httpx.Client, server: OpenAIServer, **body: Any) -> list[dict[str, Any]]:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, **body}
    response = http.post(f"{server.base_url}/chat/completions", json=payload)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    lines = [line for line in response.text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_text_reply(http: httpx.Client) -> None:
    with OpenAIServer([{"text": "Sunny.", "usage": {"prompt_tokens": 3}}]) as server:
        body = chat(http, server)

    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Sunny."}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert body["object"] == "chat.completion"


def test_tool_call_reply(http: httpx.Client) -> None:
    reply = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    with OpenAIServer([reply]) as server:
        body = chat(http, server, tools=TOOLS)

    message = body["choices"][0]["message"]
    assert message["content"] == ""
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_text_and_tool_calls(http: httpx.Client) -> None:
    reply = {
        "text": "Checking the weather",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "c9"}],
        "chunk_size": 5,
    }
    with OpenAIServer([reply]) as server:
        chunks = stream(http, server)

    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content") or "" for d in deltas) == "Checking the weather"
    call_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert call_deltas[0] == {
        "index": 0,
        "id": "c9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    arguments = "".join(d["function"]["arguments"] for d in call_deltas)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 15


def test_quirks_on_the_wire(http: httpx.Client) -> None:
    script = [
        {"text": None, "function_call": {"name": "get_weather", "arguments": "{bad"}},
        {"tool_calls": [{"name": "a", "id": None}, {"name": "b", "id": None}], "same_index": True},
        {"tool_calls": [{"name": "a"}], "no_index": True, "finish_reason": None},
    ]
    with OpenAIServer(script) as server:
        legacy = chat(http, server)["choices"][0]
        same_index = stream(http, server)
        no_index = stream(http, server)

    assert legacy["message"]["content"] is None
    assert legacy["message"]["function_call"] == {"name": "get_weather", "arguments": "{bad"}
    assert legacy["finish_reason"] == "function_call"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in same_index[1:-2]]
    assert {call["index"] for call in calls} == {0}
    assert all("id" not in call for call in calls)
    call = no_index[1]["choices"][0]["delta"]["tool_calls"][0]
    assert "index" not in call
    assert no_index[-2]["choices"][0]["finish_reason"] is None


def test_errors_and_raw_bodies(http: httpx.Client) -> None:
    script = [
        {"status": 429, "error": {"message": "slow down"}, "headers": {"retry-after": "2"}},
        {"raw": "not json at all"},
    ]
    with OpenAIServer(script) as server:
        url = f"{server.base_url}/chat/completions"
        limited = http.post(url, json=CHAT)
        raw = http.post(url, json=CHAT)
        exhausted = http.post(url, json=CHAT)

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["message"] == "slow down"
    assert raw.status_code == 200
    assert raw.text == "not json at all"
    assert exhausted.status_code == 500
    assert "script exhausted" in exhausted.json()["error"]["message"]


def test_rules_default_and_templates(http: httpx.Client) -> None:
    script = Script.from_json(
        {
            "rules": [
                {
                    "when": {"user_contains": "WEATHER", "last_role": "user"},
                    "tool_calls": [{"name": "$first_tool", "arguments": {"q": "{last_user}"}}],
                },
                {"when": {"last_role": "tool"}, "text": "The tool said: {last_tool_result}"},
            ],
            "echo": True,
        }
    )
    after_tool = [*CHAT["messages"], {"role": "tool", "tool_call_id": "x", "content": "sunny"}]
    with OpenAIServer(script) as server:
        first = chat(http, server, tools=TOOLS)
        second = chat(http, server, tools=TOOLS, messages=after_tool)
        third = chat(http, server, messages=[{"role": "user", "content": "hi"}])
        fourth = chat(http, server, messages=[{"role": "user", "content": "hi again"}])

    (call,) = first["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"q": "What is the weather in Paris?"}
    assert second["choices"][0]["message"]["content"] == "The tool said: sunny"
    assert third["choices"][0]["message"]["content"] == "echo: hi"
    assert fourth["choices"][0]["message"]["content"] == "echo: hi again"


def test_models_requests_and_auth(http: httpx.Client) -> None:
    with OpenAIServer([{"text": "ok"}], api_key="k", model="tiny") as server:
        denied = http.get(f"{server.base_url}/models")
        models = http.get(f"{server.base_url}/models", headers={"Authorization": "Bearer k"})
        missing = http.get(f"{server.base_url}/nothing", headers={"Authorization": "Bearer k"})
        answered = http.post(
            f"{server.base_url}/chat/completions", json=CHAT, headers={"Authorization": "Bearer k"}
        )

    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    assert models.json()["data"][0]["id"] == "tiny"
    assert missing.status_code == 404
    assert answered.status_code == 200
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/models"),
        ("GET", "/v1/models"),
        ("GET", "/v1/nothing"),
        ("POST", "/v1/chat/completions"),
    ]
    assert server.chat_requests == [CHAT]
    assert server.requests[1].headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("nope", "list of replies or an object"),
        ({"replies": [1]}, "must be an object"),
        ({"other": []}, "unknown script keys"),
        ({"default": "x"}, "'default' must be an object"),
        ({"rules": {}}, "must be lists"),
    ],
)
def test_bad_scripts_are_refused(data: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Script.from_json(data)


def test_stopping_does_not_wait_for_delayed_replies(http: httpx.Client) -> None:
    server = OpenAIServer([{"delay": 30, "text": "late"}])
    server.start()
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"{server.base_url}/chat/completions", json=CHAT, timeout=0.2)

    server.stop()

    assert server.script.pending == 0


def test_runs_as_a_subprocess(tmp_path: Path, http: httpx.Client) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": [{"text": "first"}], "echo": True}))
    process = subprocess.Popen(
        [sys.executable, "-m", "openbuda.testing.openai_server", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("openai_server listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[1].strip()
        first = http.post(f"{base_url}/chat/completions", json=CHAT).json()
        second = http.post(f"{base_url}/chat/completions", json=CHAT).json()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)

    assert process.returncode == 0
    assert "openai_server stopped" in stderr
    assert first["choices"][0]["message"]["content"] == "first"
    assert second["choices"][0]["message"]["content"] == "echo: What is the weather in Paris?"


def test_responder_answers_from_the_request(http: httpx.Client) -> None:
    def responder(body: Mapping[str, Any]) -> dict[str, Any] | None:
        last = body["messages"][-1]["content"]
        return {"text": f"{len(body['messages'])}: {last}"} if last != "pass" else None

    script = Script(
        [{"text": "queued first"}],
        rules=[{"when": {"user_contains": "rule"}, "text": "by rule"}],
        default={"text": "by default"},
        responder=responder,
    )
    two = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    with OpenAIServer(script) as server:
        replies = [
            chat(http, server, messages=two),
            chat(http, server, messages=[{"role": "user", "content": "a rule"}]),
            chat(http, server, messages=two),
            chat(http, server, messages=[{"role": "user", "content": "pass"}]),
        ]

    assert [r["choices"][0]["message"]["content"] for r in replies] == [
        "queued first",  # rules, then queued replies come before the responder
        "by rule",
        "2: hi",
        "by default",  # the responder gave nothing
    ]


def test_a_failing_responder_is_a_500_that_says_why(http: httpx.Client) -> None:
    def responder(body: Mapping[str, Any]) -> dict[str, Any] | None:
        raise KeyError("plan")

    with OpenAIServer(Script(responder=responder)) as server:
        response = http.post(f"{server.base_url}/chat/completions", json=CHAT)

    assert response.status_code == 500
    assert "responder failed: KeyError('plan')" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("no_colon", "module:function"),
        ("json:", "module:function"),
        ("json:__name__", "not callable"),
    ],
)
def test_bad_responders_are_refused(target: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        load_responder(target)


def test_subprocess_with_a_responder(http: httpx.Client) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openbuda.testing.openai_server",
            "--responder",
            "tests.scaleout.model:respond",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        planned = {"model": "m", "messages": [{"role": "user", "content": "[t1] plan:"}]}
        answered = http.post(f"{base_url}/chat/completions", json=planned).json()
        unplanned = http.post(f"{base_url}/chat/completions", json=CHAT)
    finally:
        process.terminate()
        process.communicate(timeout=10)

    assert answered["choices"][0]["message"]["content"] == "done t1"
    assert unplanned.status_code == 500  # no plan, no default: nothing to answer with
    assert "script exhausted" in unplanned.json()["error"]["message"]
