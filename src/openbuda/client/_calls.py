"""Every API call the SDK makes, described once: method, path, query, body and how to read the
answer. ``Client`` and ``AsyncClient`` only send these, so both speak exactly the same API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from openbuda.client._models import (
    Agent,
    ApiKey,
    ComputerStatus,
    Event,
    ExecResult,
    Health,
    HistoryMessage,
    Me,
    Message,
    MessageAccepted,
    Page,
    PreviewLink,
    Session,
    Space,
    SpaceCreated,
    Task,
)

__all__ = ["Call", "HistoryItem", "OnBusy", "SessionStatusFilter", "TaskStatusFilter"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

OnBusy: TypeAlias = Literal["queue", "steer", "interrupt", "reject"]
SessionStatusFilter: TypeAlias = Literal["working", "waiting", "idle", "dormant"]
TaskStatusFilter: TypeAlias = Literal[
    "queued", "running", "waiting", "completed", "failed", "cancelled"
]
HistoryItem: TypeAlias = HistoryMessage | Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the reader of its answer's JSON (``None`` for an empty answer)."""

    method: str
    path: str
    read: Callable[[Any], T]
    params: dict[str, str | int] = field(default_factory=dict[str, str | int])
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict[str, str])
    auth: bool = True
    timeout: httpx.Timeout | None = None
    """``None``: the client's timeout."""


def _segment(value: str) -> str:
    return quote(value, safe="")


def _params(**values: str | int | None) -> dict[str, str | int]:
    return {name: value for name, value in values.items() if value is not None}


def _body(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _created(idempotency_key: str | None) -> dict[str, str]:
    return {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}


def _one(model: type[M]) -> Callable[[Any], M]:
    return model.model_validate


def _page(model: type[M]) -> Callable[[Any], Page[M]]:
    def read(body: Any) -> Page[M]:
        if isinstance(body, list):  # a plain list is one page with nothing after it
            return Page([model.model_validate(item) for item in body])
        items: list[Any] = body.get("items", [])
        cursor: Any = body.get("next_cursor")
        return Page([model.model_validate(item) for item in items], cursor, raw=body)

    return read


def _nothing(_body: Any) -> None:
    return None


def _history(history: Sequence[HistoryItem]) -> list[dict[str, str]]:
    return [
        item.model_dump() if isinstance(item, HistoryMessage) else dict(item) for item in history
    ]


# -- health and identity ---------------------------------------------------------------------


def health() -> Call[Health]:
    return Call("GET", "/v1/health", _one(Health), auth=False)


def me() -> Call[Me]:
    return Call("GET", "/v1/me", _one(Me))


# -- API keys and spaces ------------------------------------------------------------------


def api_keys_list(limit: int | None, cursor: str | None) -> Call[Page[ApiKey]]:
    return Call("GET", "/v1/api-keys", _page(ApiKey), _params(limit=limit, cursor=cursor))


def api_keys_create(
    name: str, expires_in_days: int | None, role: str | None, idempotency_key: str | None
) -> Call[ApiKey]:
    body = _body(name=name, expires_in_days=expires_in_days, role=role)
    return Call("POST", "/v1/api-keys", _one(ApiKey), json=body, headers=_created(idempotency_key))


def api_keys_delete(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/api-keys/{_segment(key_id)}", _nothing)


def spaces_list(limit: int | None, cursor: str | None) -> Call[Page[Space]]:
    return Call("GET", "/v1/spaces", _page(Space), _params(limit=limit, cursor=cursor))


def spaces_create(name: str, idempotency_key: str | None) -> Call[SpaceCreated]:
    return Call(
        "POST",
        "/v1/spaces",
        _one(SpaceCreated),
        json={"name": name},
        headers=_created(idempotency_key),
    )


# -- agents ------------------------------------------------------------------------------


def agents_create(
    name: str,
    description: str | None,
    instructions: str | None,
    model: str | None,
    settings: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[Agent]:
    body = _body(
        name=name,
        description=description,
        instructions=instructions,
        model=model,
        settings=None if settings is None else dict(settings),
    )
    return Call("POST", "/v1/agents", _one(Agent), json=body, headers=_created(idempotency_key))


def agents_list(limit: int | None, cursor: str | None) -> Call[Page[Agent]]:
    return Call("GET", "/v1/agents", _page(Agent), _params(limit=limit, cursor=cursor))


def agents_get(agent_id: str) -> Call[Agent]:
    return Call("GET", f"/v1/agents/{_segment(agent_id)}", _one(Agent))


def agents_update(agent_id: str, changes: Mapping[str, Any]) -> Call[Agent]:
    return Call("PATCH", f"/v1/agents/{_segment(agent_id)}", _one(Agent), json=dict(changes))


def agents_delete(agent_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/agents/{_segment(agent_id)}", _nothing)


# -- sessions -----------------------------------------------------------------------------


def sessions_create(
    agent_id: str,
    title: str | None,
    external_user_id: str | None,
    history: Sequence[HistoryItem] | None,
    idempotency_key: str | None,
) -> Call[Session]:
    body = _body(
        title=title,
        external_user_id=external_user_id,
        history=None if history is None else _history(history),
    )
    return Call(
        "POST",
        f"/v1/agents/{_segment(agent_id)}/sessions",
        _one(Session),
        json=body,
        headers=_created(idempotency_key),
    )


def sessions_list(
    agent_id: str,
    status: str | None,
    external_user_id: str | None,
    q: str | None,
    limit: int | None,
    cursor: str | None,
) -> Call[Page[Session]]:
    params = _params(
        status=status, external_user_id=external_user_id, q=q, limit=limit, cursor=cursor
    )
    return Call("GET", f"/v1/agents/{_segment(agent_id)}/sessions", _page(Session), params)


def sessions_get(session_id: str) -> Call[Session]:
    return Call("GET", f"/v1/sessions/{_segment(session_id)}", _one(Session))


def sessions_rename(session_id: str, title: str) -> Call[Session]:
    return Call(
        "PATCH", f"/v1/sessions/{_segment(session_id)}", _one(Session), json={"title": title}
    )


def sessions_delete(session_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/sessions/{_segment(session_id)}", _nothing)


def sessions_send(
    session_id: str, text: str, on_busy: OnBusy | None, idempotency_key: str | None
) -> Call[MessageAccepted]:
    return Call(
        "POST",
        f"/v1/sessions/{_segment(session_id)}/messages",
        _one(MessageAccepted),
        json=_body(text=text, on_busy=on_busy),
        headers=_created(idempotency_key),
    )


def sessions_messages(
    session_id: str, after: int | None, limit: int | None, cursor: str | None
) -> Call[Page[Message]]:
    return Call(
        "GET",
        f"/v1/sessions/{_segment(session_id)}/messages",
        _page(Message),
        _params(after=after, limit=limit, cursor=cursor),
    )


def sessions_events(
    session_id: str, after: int | None, limit: int | None, cursor: str | None
) -> Call[Page[Event]]:
    return Call(
        "GET",
        f"/v1/sessions/{_segment(session_id)}/events",
        _page(Event),
        _params(after=after, limit=limit, cursor=cursor),
    )


# -- tasks --------------------------------------------------------------------------------


def tasks_get(task_id: str) -> Call[Task]:
    return Call("GET", f"/v1/tasks/{_segment(task_id)}", _one(Task))


def tasks_list(
    status: str | None,
    session_id: str | None,
    agent_id: str | None,
    limit: int | None,
    cursor: str | None,
) -> Call[Page[Task]]:
    params = _params(
        status=status, session_id=session_id, agent_id=agent_id, limit=limit, cursor=cursor
    )
    return Call("GET", "/v1/tasks", _page(Task), params)


def tasks_cancel(task_id: str) -> Call[Task]:
    return Call("POST", f"/v1/tasks/{_segment(task_id)}/cancel", _one(Task))


def tasks_answer(
    task_id: str,
    question_id: str,
    text: str | None,
    choice: str | None,
    approved: bool | None,
    note: str | None,
) -> Call[Task]:
    body = _body(question_id=question_id, text=text, choice=choice, approved=approved, note=note)
    return Call("POST", f"/v1/tasks/{_segment(task_id)}/answer", _one(Task), json=body)


# -- computer --------------------------------------------------------------------------------

EXEC_GRACE_S = 30.0
"""How much longer than the command's timeout the SDK waits for the result."""


def _computer(agent_id: str, action: str = "") -> str:
    return f"/v1/agents/{_segment(agent_id)}/computer{action}"


def computer_status(agent_id: str) -> Call[ComputerStatus]:
    return Call("GET", _computer(agent_id), _one(ComputerStatus))


def computer_action(
    agent_id: str, action: Literal["wake", "sleep", "restart"]
) -> Call[ComputerStatus]:
    return Call("POST", _computer(agent_id, f"/{action}"), _one(ComputerStatus))


def exec_timeout(connect: float | None, timeout_s: float | None) -> httpx.Timeout:
    """Wait for the command: its timeout and a grace period, or without limit when the
    server's default (the agent's ``exec_timeout_s``) applies."""
    read = None if timeout_s is None else timeout_s + EXEC_GRACE_S
    return httpx.Timeout(connect, read=read, write=connect, pool=connect)


def computer_exec(
    agent_id: str, command: str, cwd: str | None, timeout_s: float | None, connect: float | None
) -> Call[ExecResult]:
    return Call(
        "POST",
        _computer(agent_id, "/exec"),
        _one(ExecResult),
        json=_body(command=command, cwd=cwd, timeout_s=timeout_s),
        timeout=exec_timeout(connect, timeout_s),
    )


def computer_preview_link(agent_id: str, port: int, expires_in_s: int | None) -> Call[PreviewLink]:
    return Call(
        "POST",
        _computer(agent_id, f"/ports/{int(port)}/link"),
        _one(PreviewLink),
        json=_body(expires_in_s=expires_in_s),
    )
