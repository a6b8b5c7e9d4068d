"""Where the SDK finds its server and key: the arguments, else ``Settings`` (``OPENBUDA_URL``,
``OPENBUDA_API_KEY``), else ``$OPENBUDA_HOME/credentials.json`` (written by ``openbuda serve``),
else the local default URL.

The key saved in credentials.json belongs to the server saved with it: it is never sent to
another URL given by argument or environment.
"""

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
    saved_url: str | None = None
    """The URL of the key in credentials.json that was not used because it is another server's."""


def resolve_connection(
    base_url: str | None, api_key: str | None, settings: Settings | None
) -> Connection:
    settings = settings if settings is not None else Settings()
    path = settings.home / "credentials.json"
    url = _clean(base_url or settings.url)
    key = api_key or settings.api_key
    if url is not None and key is not None:
        return Connection(url, key, path)
    saved = _read_credentials(path)
    saved_url = _clean(_text(saved.get("url")))
    saved_key = _text(saved.get("api_key"))
    if url is None:
        return Connection(saved_url or DEFAULT_URL, key or saved_key, path)
    if key is None and saved_key is not None:
        if url == (saved_url or DEFAULT_URL):
            return Connection(url, saved_key, path)
        return Connection(url, None, path, saved_url=saved_url or DEFAULT_URL)
    return Connection(url, key, path)


def _read_credentials(path: Path) -> dict[str, Any]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _clean(url: str | None) -> str | None:
    return None if not url else url.rstrip("/")
