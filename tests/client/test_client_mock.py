"""The SDK against ``httpx.MockTransport``: requests as API.md says, answers as typed models,
error answers as typed exceptions, transport failures as ``ConnectionFailed``, and where the
URL and key come from."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from openbuda.client import (
    NOT_GIVEN,
    Agents,
    ApiError,
    ApiKeys,
    AsyncAgents,
    AsyncApiKeys,
    AsyncClient,
    AsyncSessions,
    AsyncSpaces,
    AsyncTasks,
    Client,
    ConnectionFailed,
    HistoryMessage,
    InvalidResponse,
    MissingCredentials,
    Sessions,
    Spaces,
    Tasks,
)
from openbuda.domain.errors import (
    Conflict,
    InvalidTransition,
    NotFound,
    OpenbudaError,
    QuestionPending,
    RateLimited,
    SessionBusy,
    Unavailable,
    ValidationFailed,
)
from openbuda.domain.states import TaskStatus
from openbuda.settings import Settings

pytestmark = pytest.mark.anyio

AT = "2025-01-01T00:00:00Z"
TASK = {"id": "tsk_1", "session_id": "ses_1", "status": "queued", "created_at": AT}
AGENT = {"id": "agt_1", "name": "helper", "model": None, "created_at": AT, "updated_at": AT}
SESSION = {
    "id": "ses_1",
    "agent_id": "agt_1",
    "title": "",
    "status": "idle",
    "external_user_id": None,
    "created_at": AT,
    "last_activity_at": AT,
    "task_count": 0,
    "open_question": None,
}


class Recorder:
    """Answers every request with ``answer(request)`` and keeps the requests."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def client_for(recorder: Recorder, tmp_path: Path) -> Client:
    return Client(
        "http://openbuda.test/",
        "ob_secret",
        transport=httpx.MockTransport(recorder),
        settings=Settings(home=tmp_path),
    )


def error(status: int, code: str, message: str = "m", **details: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return httpx.Response(status, json=body)


def test_requests_follow_the_contract(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        match request.method, request.url.path:
            case "POST", "/v1/agents":
                return httpx.Response(201, json=AGENT)
            case "PATCH", "/v1/agents/agt_1":
                return httpx.Response(200, json=AGENT)
            case "POST", "/v1/agents/agt_1/sessions":
                return httpx.Response(201, json=SESSION)
            case "GET", "/v1/agents/agt_1/sessions":
                return httpx.Response(200, json={"items": [SESSION], "next_cursor": None})
            case "POST", "/v1/sessions/ses_1/messages":
                body = {"message_id": "msg_1", "task_id": "tsk_1", "session_id": "ses_1"}
                return httpx.Response(202, json=body)
            case "POST", "/v1/tasks/tsk_1/answer":
                return httpx.Response(202, json=TASK)
            case "DELETE", "/v1/sessions/ses_1":
                return httpx.Response(204)
            case _:
                raise AssertionError(f"unexpected {request.method} {request.url}")

    recorder = Recorder(answer)
    with client_for(recorder, tmp_path) as client:
        agent = client.agents.create(
            "helper", instructions="Be brief.", settings={"max_steps": 3}, idempotency_key="k1"
        )
        assert recorder.body() == {
            "name": "helper",
            "instructions": "Be brief.",
            "settings": {"max_steps": 3},
        }
        assert recorder.last.headers["idempotency-key"] == "k1"
        assert recorder.last.headers["authorization"] == "Bearer ob_secret"
        assert agent.settings.max_steps == 50  # the server's answer, with defaults filled in

        client.agents.update("agt_1", model=None, description="d")
        assert recorder.body() == {"model": None, "description": "d"}
        assert NOT_GIVEN not in recorder.body().values()

        client.sessions.create(
            "agt_1",
            title="t",
            history=[HistoryMessage(role="user", text="a"), {"role": "assistant", "text": "b"}],
        )
        assert recorder.body() == {
            "title": "t",
            "history": [{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}],
        }
        assert "idempotency-key" not in recorder.last.headers

        page = client.sessions.list("agt_1", status="waiting", q="plan", limit=10)
        assert dict(recorder.last.url.params) == {"status": "waiting", "q": "plan", "limit": "10"}
        assert [s.id for s in page.items] == ["ses_1"] and page.next_cursor is None

        accepted = client.sessions.send("ses_1", "hello", on_busy="steer", idempotency_key="m1")
        assert recorder.body() == {"text": "hello", "on_busy": "steer"}
        assert recorder.last.headers["idempotency-key"] == "m1"
        assert accepted.task_id == "tsk_1"

        task = client.tasks.answer("tsk_1", "q_1", approved=False, note="not now")
        assert recorder.body() == {"question_id": "q_1", "approved": False, "note": "not now"}
        assert task.status is TaskStatus.QUEUED

        assert client.sessions.delete("ses_1") is None


def test_ids_are_escaped_in_paths(tmp_path: Path) -> None:
    recorder = Recorder(lambda request: error(404, "not_found"))
    with client_for(recorder, tmp_path) as client, pytest.raises(NotFound):
        client.sessions.get("../agents")
    assert recorder.last.url.raw_path == b"/v1/sessions/..%2Fagents"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (409, "session_busy", SessionBusy),
        (409, "question_pending", QuestionPending),
        (409, "invalid_transition", InvalidTransition),
        (422, "validation_error", ValidationFailed),
        (429, "rate_limited", RateLimited),
        (503, "unavailable", Unavailable),
    ],
)
def test_error_answers_raise_the_class_of_their_code(
    tmp_path: Path, status: int, code: str, expected: type[OpenbudaError]
) -> None:
    recorder = Recorder(lambda request: error(status, code, "it went wrong", task_id="tsk_1"))
    with client_for(recorder, tmp_path) as client, pytest.raises(expected) as raised:
        client.tasks.cancel("tsk_1")
    problem = raised.value
    assert isinstance(problem, ApiError)
    assert (problem.status, problem.code, problem.message) == (status, code, "it went wrong")
    assert problem.details == {"task_id": "tsk_1"}
    assert problem.retryable is (code in ("rate_limited", "unavailable"))
    assert type(problem).__name__ == expected.__name__


def test_a_code_without_a_class_keeps_its_code(tmp_path: Path) -> None:
    recorder = Recorder(lambda request: error(405, "method_not_allowed", "no"))
    with client_for(recorder, tmp_path) as client, pytest.raises(ApiError) as raised:
        client.me()
    assert (raised.value.code, raised.value.status) == ("method_not_allowed", 405)
    assert str(raised.value) == "no (method_not_allowed, HTTP 405)"


def test_an_answer_that_is_not_the_error_shape(tmp_path: Path) -> None:
    recorder = Recorder(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with client_for(recorder, tmp_path) as client, pytest.raises(ApiError) as raised:
        client.me()
    assert raised.value.code == "server_error"
    assert raised.value.retryable
    assert "HTTP 502 Bad Gateway: <html>Bad Gateway</html>" in raised.value.message


def test_connection_refused_names_the_server(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with (
        client_for(Recorder(refuse), tmp_path) as client,
        pytest.raises(ConnectionFailed) as raised,
    ):
        client.agents.list()
    assert str(raised.value) == (
        "cannot reach the openbuda server at http://openbuda.test (Connection refused): "
        "is `openbuda serve` running?"
    )
    assert raised.value.retryable


def test_a_timeout_is_a_connection_failure(tmp_path: Path) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with client_for(Recorder(slow), tmp_path) as client, pytest.raises(ConnectionFailed) as raised:
        client.agents.list()
    assert "did not answer in time" in str(raised.value)


def test_an_answer_the_sdk_cannot_read(tmp_path: Path) -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={"role": "owner"}))
    with client_for(recorder, tmp_path) as client, pytest.raises(InvalidResponse) as raised:
        client.me()
    assert "GET /v1/me answered 200 with a body the SDK cannot read" in str(raised.value)
    not_json = Recorder(lambda request: httpx.Response(200, text="<html>"))
    with client_for(not_json, tmp_path) as client, pytest.raises(InvalidResponse):
        client.me()


def test_pagination_iterates_every_page(tmp_path: Path) -> None:
    pages = {
        None: {"items": [dict(TASK, id="tsk_1"), dict(TASK, id="tsk_2")], "next_cursor": "c1"},
        "c1": {"items": [dict(TASK, id="tsk_3")], "next_cursor": None},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    recorder = Recorder(answer)
    with client_for(recorder, tmp_path) as client:
        ids = [task.id for task in client.tasks.iterate(status="waiting", page_size=2)]
    assert ids == ["tsk_1", "tsk_2", "tsk_3"]
    assert [r.url.params.get("cursor") for r in recorder.requests] == [None, "c1"]
    assert all(r.url.params["status"] == "waiting" for r in recorder.requests)


async def test_the_async_client_mirrors_the_sync_one() -> None:
    pages = {
        None: {"items": [AGENT], "next_cursor": "c1"},
        "c1": {"items": [dict(AGENT, id="agt_2")], "next_cursor": None},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/agents/agt_9":
            return error(404, "not_found")
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    recorder = Recorder(answer)
    async with AsyncClient(
        "http://openbuda.test", "ob_secret", transport=httpx.MockTransport(recorder)
    ) as client:
        assert [agent.id async for agent in client.agents.iterate()] == ["agt_1", "agt_2"]
        with pytest.raises(NotFound):
            await client.agents.get("agt_9")


# -- where the URL and the key come from -----------------------------------------------------


def test_credentials_file_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBUDA_URL", raising=False)
    monkeypatch.delenv("OPENBUDA_API_KEY", raising=False)
    (tmp_path / "credentials.json").write_text(
        json.dumps({"url": "http://saved:9000/", "api_key": "ob_saved"})
    )
    recorder = Recorder(
        lambda request: httpx.Response(200, json={"items": [], "next_cursor": None})
    )
    transport = httpx.MockTransport(recorder)
    with Client(transport=transport, settings=Settings(home=tmp_path)) as client:
        assert client.base_url == "http://saved:9000"
        assert client.agents.list().items == []
    assert str(recorder.last.url) == "http://saved:9000/v1/agents"
    assert recorder.last.headers["authorization"] == "Bearer ob_saved"

    # the environment wins over the file, the arguments over both
    monkeypatch.setenv("OPENBUDA_HOME", str(tmp_path))
    monkeypatch.setenv("OPENBUDA_API_KEY", "ob_env")
    with Client(transport=transport) as client:
        client.agents.list()
    assert recorder.last.headers["authorization"] == "Bearer ob_env"
    assert recorder.last.url.host == "saved"
    with Client("http://given", "ob_given", transport=transport) as client:
        client.agents.list()
    assert str(recorder.last.url) == "http://given/v1/agents"
    assert recorder.last.headers["authorization"] == "Bearer ob_given"


def test_the_saved_key_is_never_sent_to_another_server(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(
        json.dumps({"url": "http://127.0.0.1:8000", "api_key": "ob_local"})
    )
    recorder = Recorder(
        lambda request: httpx.Response(200, json={"items": [], "next_cursor": None})
    )
    transport = httpx.MockTransport(recorder)
    settings = Settings(home=tmp_path, url=None, api_key=None)
    with Client("http://127.0.0.1:8000/", transport=transport, settings=settings) as client:
        client.agents.list()  # the same server: its saved key is used
    assert recorder.last.headers["authorization"] == "Bearer ob_local"
    with (
        Client("https://elsewhere.example", transport=transport, settings=settings) as client,
        pytest.raises(MissingCredentials) as raised,
    ):
        client.agents.list()
    assert "the key in" in str(raised.value) and "is for http://127.0.0.1:8000" in str(raised.value)
    assert len(recorder.requests) == 1


def test_a_null_url_in_the_credentials_uses_the_local_default(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps({"url": None, "api_key": "ob_x"}))
    client = Client(settings=Settings(home=tmp_path, url=None, api_key=None))
    assert client.base_url == "http://127.0.0.1:8000"
    client.close()


def test_no_key_anywhere(tmp_path: Path) -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={"status": "ok"}))
    settings = Settings(home=tmp_path, url=None, api_key=None)
    with Client(transport=httpx.MockTransport(recorder), settings=settings) as client:
        assert client.health().status == "ok"  # the one route without auth
        with pytest.raises(MissingCredentials) as raised:
            client.me()
    assert str(tmp_path / "credentials.json") in str(raised.value)
    assert "OPENBUDA_API_KEY" in str(raised.value)
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("sync", "asynchronous"),
    [
        (Client, AsyncClient),
        (Agents, AsyncAgents),
        (ApiKeys, AsyncApiKeys),
        (Sessions, AsyncSessions),
        (Spaces, AsyncSpaces),
        (Tasks, AsyncTasks),
    ],
)
def test_the_async_client_has_the_same_methods_and_parameters(
    sync: type[object], asynchronous: type[object]
) -> None:
    def surface(cls: type[object]) -> dict[str, list[str]]:
        return {
            name: [p for p in inspect.signature(member).parameters if p != "self"]
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    assert surface(sync) == surface(asynchronous)
