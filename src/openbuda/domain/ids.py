"""Prefixed, time-ordered identifiers.

An id is ``<prefix>_<26 characters of Crockford base32>``: 48 bits of milliseconds since the
epoch followed by 80 random bits (the ULID layout), so ids sort by creation time as strings.
Within one process ids made in the same millisecond still sort in creation order: the random
part is incremented instead of drawn again.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Final, Literal

__all__ = ["PREFIXES", "IdKind", "has_prefix", "new_id"]

IdKind = Literal[
    "space", "member", "api_key", "agent", "session", "task", "event", "question", "message", "call"
]

PREFIXES: Final[dict[IdKind, str]] = {
    "space": "spc",
    "member": "mbr",
    "api_key": "key",
    "agent": "agt",
    "session": "ses",
    "task": "tsk",
    "event": "evt",
    "question": "q",
    "message": "msg",
    "call": "call",
}

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS: Final = 80
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _encode(value: int, length: int) -> str:
    chars: list[str] = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _next_body() -> str:
    global _last_ms, _last_random
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_random = (_last_random + 1) % (1 << _RANDOM_BITS)
        else:
            _last_ms = now_ms
            _last_random = int.from_bytes(os.urandom(10), "big") >> 1
        return _encode(now_ms, 10) + _encode(_last_random, 16)


def new_id(kind: IdKind) -> str:
    """A fresh id for an object of ``kind``, e.g. ``new_id("session") -> "ses_01J…"``."""
    return f"{PREFIXES[kind]}_{_next_body()}"


def has_prefix(value: str, kind: IdKind) -> bool:
    """Whether ``value`` looks like an id of ``kind`` (prefix and body length)."""
    prefix = PREFIXES[kind] + "_"
    return value.startswith(prefix) and len(value) == len(prefix) + 26
