"""Structured logs: one JSON object per line when stderr is not a terminal, readable text when
it is. Every record carries the ids bound to the current context (``task_id``, ``session_id``,
``agent_id``, ``request_id`` …): the engine's run of a task and the handling of a request bind
theirs, so any log line written on their behalf names them.

::

    token = bind(task_id="tsk_…", session_id="ses_…")
    try:
        log.info("something happened")   # {"message": "something happened", "task_id": …}
    finally:
        unbind(token)
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "configure_logging",
    "context",
    "unbind",
]

_EMPTY: Final[dict[str, str]] = {}
_CONTEXT: Final[ContextVar[dict[str, str]]] = ContextVar(
    "openbuda_log_context",
    default=_EMPTY,  # never mutated: ``bind`` sets a new dict
)
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def bind(**values: str | None) -> Token[dict[str, str]]:
    """Add ids to the current context's log records until ``unbind``."""
    current = _CONTEXT.get()
    return _CONTEXT.set({**current, **{k: v for k, v in values.items() if v is not None}})


def unbind(token: Token[dict[str, str]]) -> None:
    _CONTEXT.reset(token)


def context() -> dict[str, str]:
    return dict(_CONTEXT.get())


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (as attributes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _STANDARD and not name.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _extras(record).items():
            entry[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += "  " + " ".join(f"{name}={value}" for name, value in extras.items())
        return text


def configure_logging(
    *, level: str = "INFO", fmt: str | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Send openbuda's (and uvicorn's) logs to ``stream`` (stderr) in ``fmt`` (``json`` or
    ``text``; default JSON unless the stream is a terminal). Returns the handler installed."""
    out: TextIO = stream or sys.stderr
    if fmt is None:
        fmt = "text" if out.isatty() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
