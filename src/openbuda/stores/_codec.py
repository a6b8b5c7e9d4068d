"""Translation between rows and domain records: JSON text, records from rows, list cursors.

JSON is stored as compact text (``separators=(",", ":")``, ``ensure_ascii=False``) so that
SQLite and PostgreSQL store byte-identical payloads.

Cursors are opaque to clients: URL-safe base64 of a small JSON array ``[kind, *sort key]``.
A cursor of another list, or anything malformed, raises ``InvalidRequest``.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Final

from openbuda.domain.drive import Actor, DriveFile, DriveVersion
from openbuda.domain.errors import InvalidRequest
from openbuda.domain.events import CONVERSATION_TYPES
from openbuda.domain.records import (
    Agent,
    AgentSettings,
    ApiKey,
    Event,
    Member,
    Question,
    Role,
    Session,
    Space,
    Task,
    TaskError,
    TaskResult,
)
from openbuda.domain.states import SessionStatus, TaskStatus, derive_session_status
from openbuda.stores._connections import AnyRow

__all__ = [
    "agent_from_row",
    "api_key_from_row",
    "check_limit",
    "decode_cursor",
    "drive_file_from_row",
    "drive_version_from_row",
    "dump_json",
    "encode_cursor",
    "event_from_row",
    "load_json",
    "member_from_row",
    "session_from_row",
    "space_from_row",
    "task_from_row",
    "token_estimate",
]

_CONVERSATION_TYPE_NAMES: Final = frozenset(str(kind) for kind in CONVERSATION_TYPES)


def dump_json(value: Any) -> str:
    """Compact JSON text. Lone surrogates (invalid in UTF-8) are kept as ``\\ud…`` escapes."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value, separators=(",", ":"))
    return text


def load_json(text: str) -> Any:
    return json.loads(text)


def token_estimate(event_type: str, serialized_data: str) -> int:
    """The rough token count an event adds to the model context (0 for non-conversation)."""
    if event_type in _CONVERSATION_TYPE_NAMES:
        return len(serialized_data) // 4 + 1
    return 0


def check_limit(limit: int) -> None:
    """Refuse a list ``limit`` below 1 (``InvalidRequest``)."""
    if limit < 1:
        raise InvalidRequest(f"limit must be at least 1, not {limit!r}", details={"limit": limit})


# ---------------------------------------------------------------------------------------------
# Cursors


def encode_cursor(kind: str, moment: datetime, object_id: str) -> str:
    raw = json.dumps([kind, moment.isoformat(), object_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
    """The ``(time, id)`` sort key of a cursor made by ``encode_cursor(kind, …)``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        if not (isinstance(value, list) and len(value) == 3 and value[0] == kind):
            raise ValueError("wrong shape")
        moment_text, object_id = value[1], value[2]
        if not (isinstance(moment_text, str) and isinstance(object_id, str)):
            raise ValueError("wrong types")
        if "\x00" in object_id or len(object_id) > 200:
            raise ValueError("not an id")
        moment = datetime.fromisoformat(moment_text)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        moment = moment.astimezone(UTC)
        if not 1970 <= moment.year <= 9998:
            raise ValueError("time out of range")
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid cursor {cursor!r}", details={"cursor": cursor}) from exc
    return moment, object_id


# ---------------------------------------------------------------------------------------------
# Records from rows


def space_from_row(row: AnyRow) -> Space:
    return Space(id=row.id, name=row.name, created_at=row.created_at)


def member_from_row(row: AnyRow) -> Member:
    return Member(
        id=row.id,
        space_id=row.space_id,
        name=row.name,
        role=Role(row.role),
        created_at=row.created_at,
    )


def api_key_from_row(row: AnyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        space_id=row.space_id,
        member_id=row.member_id,
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def agent_from_row(row: AnyRow) -> Agent:
    return Agent(
        id=row.id,
        space_id=row.space_id,
        name=row.name,
        description=row.description,
        instructions=row.instructions,
        model=row.model,
        settings=AgentSettings.model_validate_json(row.settings),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def session_from_row(row: AnyRow, now: datetime) -> Session:
    """A session from a row of ``sessions`` joined with its status columns (see ``_queries``):
    ``idle_timeout_s``, ``has_active``, ``has_waiting`` and ``waiting_question``."""
    status: SessionStatus = derive_session_status(
        has_active_task=bool(row.has_active),
        has_waiting_task=bool(row.has_waiting),
        last_activity_at=row.last_activity_at,
        now=now,
        idle_timeout_s=row.idle_timeout_s,
    )
    question = row.waiting_question
    return Session(
        id=row.id,
        space_id=row.space_id,
        agent_id=row.agent_id,
        title=row.title,
        external_user_id=row.external_user_id,
        created_at=row.created_at,
        last_activity_at=row.last_activity_at,
        last_seq=row.last_seq,
        task_count=row.task_count,
        status=status,
        open_question=None if question is None else Question.from_json(load_json(question)),
    )


def task_from_row(row: AnyRow) -> Task:
    question, result, error_code = row.question, row.result, row.error_code
    return Task(
        id=row.id,
        space_id=row.space_id,
        agent_id=row.agent_id,
        session_id=row.session_id,
        status=TaskStatus(row.status),
        created_at=row.created_at,
        message_id=row.message_id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        question=None if question is None else Question.from_json(load_json(question)),
        result=None if result is None else _result_from_json(load_json(result)),
        error=None if error_code is None else TaskError(error_code, row.error_message or ""),
        lease_owner=row.lease_owner,
        lease_until=row.lease_until,
        lease_epoch=row.lease_epoch,
        steer_count=row.steer_count,
        attempts=row.attempts,
    )


def _result_from_json(data: dict[str, Any]) -> TaskResult:
    return TaskResult(text=data["text"], files=list(data.get("files") or []))


def event_from_row(row: AnyRow) -> Event:
    return Event(
        seq=row.seq,
        id=row.id,
        session_id=row.session_id,
        type=row.type,
        at=row.at,
        data=load_json(row.data),
        task_id=row.task_id,
    )


def drive_file_from_row(row: AnyRow) -> DriveFile:
    return DriveFile(
        path=row.path,
        version=row.version,
        sha256=row.sha256,
        size=row.size,
        updated_at=row.updated_at,
        change_seq=row.change_seq,
    )


def drive_version_from_row(row: AnyRow) -> DriveVersion:
    return DriveVersion(
        path=row.path,
        version=row.version,
        op=row.op,
        sha256=row.sha256,
        size=row.size,
        actor=Actor(
            member_id=row.member_id,
            agent_id=row.agent_id,
            task_id=row.task_id,
            session_id=row.session_id,
        ),
        at=row.at,
        change_seq=row.change_seq,
        restored_from=row.restored_from,
    )
