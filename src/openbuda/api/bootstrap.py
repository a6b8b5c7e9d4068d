"""The first start on an empty store: the instance owner's key, shown once and saved.

``bootstrap_instance`` creates the first space, its owner and the instance owner's API key
while the store has no key (``OPENBUDA_BOOTSTRAP_API_KEY`` if set, else a random one; any
number of processes starting at once create one between them), announces it, and writes
``$OPENBUDA_HOME/credentials.json`` (``{"url", "api_key"}``, mode 0600) for the CLI and SDK.
On later starts it does nothing: the stored key stays valid and the variable is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from openbuda.runtime import Runtime
from openbuda.service.keys import Bootstrapped, bootstrap
from openbuda.settings import Settings

__all__ = ["bootstrap_instance", "credentials_path", "public_url", "write_credentials"]

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def public_url(settings: Settings) -> str:
    """Where clients on this machine reach the server."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = _WILDCARDS.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def credentials_path(settings: Settings) -> Path:
    return settings.home / "credentials.json"


def write_credentials(path: Path, *, url: str, api_key: str) -> None:
    """Write ``{"url", "api_key"}`` readable by the owner only (0600), replacing atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump({"url": url, "api_key": api_key}, file, indent=2)
            file.write("\n")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


async def bootstrap_instance(
    runtime: Runtime, settings: Settings, announce: Callable[[str], None]
) -> Bootstrapped | None:
    """Create the instance owner's key on an empty store; ``None`` when a key exists."""
    created = await bootstrap(runtime.store, runtime.clock.now(), secret=settings.bootstrap_api_key)
    if created is None:
        return None
    path = credentials_path(settings)
    write_credentials(path, url=public_url(settings), api_key=created.secret)
    if settings.bootstrap_api_key:
        announce(
            "openbuda: created the instance owner's API key from OPENBUDA_BOOTSTRAP_API_KEY; "
            f"saved to {path}"
        )
    else:
        announce(
            "openbuda: created the instance owner's API key (shown once):\n\n"
            f"    {created.secret}\n\n"
            f"saved to {path} (mode 0600) for the CLI and SDK"
        )
    return created
