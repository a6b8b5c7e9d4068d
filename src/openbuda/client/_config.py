"""Where the SDK finds its server and key: the arguments, else ``Settings`` (``OPENBUDA_URL``,
``OPENBUDA_API_KEY``), else ``$OPENBUDA_HOME/credentials.json`` (written by ``openbuda serve``),
else the local default URL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from openbuda.settings import Settings

__all__ = ["DEFAULT_URL", "Connection", "resolve_connection"]

DEFAULT_URL: Final = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Connection:
    base_url: str
    api_key: str | None
    credentials_path: Path
    """Where the key was looked for (named in the error when there is none)."""


def resolve_connection(
    base_url: str | None, api_key: str | None, settings: Settings | None
) -> Connection:
    settings = settings if settings is not None else Settings()
    path = settings.home / "credentials.json"
    url = base_url or settings.url
    key = api_key or settings.api_key
    if url is None or key is None:
        saved = _read_credentials(path)
        url = url or _text(saved.get("url"))
        key = key or _text(saved.get("api_key"))
    return Connection((url or DEFAULT_URL).rstrip("/"), key, path)


def _read_credentials(path: Path) -> dict[str, Any]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
