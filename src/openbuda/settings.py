"""The one configuration object, read from ``OPENBUDA_*`` environment variables at the edge.

Nothing else in openbuda reads the environment: the CLI builds ``Settings`` and passes it down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENBUDA_", extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".openbuda")
    """Data directory: the SQLite database, credentials and (later) Drive blobs."""
    database_url: str | None = None
    """SQLAlchemy async URL; default ``sqlite+aiosqlite:///$OPENBUDA_HOME/openbuda.db``.
    ``postgresql://…`` URLs are accepted and use asyncpg."""
    sqlite_synchronous: str = "NORMAL"
    """SQLite ``synchronous`` level. ``NORMAL`` in WAL mode survives a killed process (every
    commit is in the WAL before the call returns) but may lose the last commits on power loss;
    ``FULL`` also survives power loss at ~7 ms per commit on this kind of machine."""
    model: str | None = None
    """Default ``provider:model`` for agents that name none (``openai:gpt-4o-mini``,
    ``anthropic:claude-…``, ``google:gemini-…``, ``local:smollm2``)."""
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    openai_api_key: str | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    google_api_key: str | None = Field(default=None, validation_alias="GOOGLE_API_KEY")
    worker_id: str | None = None
    """Stable id of this engine process; a restart with the same id re-queues at once what its
    earlier incarnation held. Default: a fresh id per process."""
    embedded: bool = True
    """One process owns the store: at start it re-queues every running task."""
    max_concurrent_tasks: int = Field(default=64, ge=1, le=100_000)
    max_tasks_per_space: int = Field(default=32, ge=1, le=100_000)
    lease_seconds: float = Field(default=30.0, gt=0.05)
    heartbeat_seconds: float = Field(default=10.0, gt=0.01)
    poll_seconds: float = Field(default=1.0, gt=0.001)
    """How often idle workers look for queued tasks (local submissions wake them at once)."""
    model_retries: int = Field(default=4, ge=0, le=20)
    model_retry_base_seconds: float = Field(default=1.0, ge=0)
    model_timeout_seconds: float = Field(default=600.0, gt=0)
    block_real_models: bool = False
    """Tests set this: any non-test model fails instead of calling a provider."""

    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite+aiosqlite:///{self.home / 'openbuda.db'}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url
