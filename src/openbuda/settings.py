"""The one configuration object, read from ``OPENBUDA_*`` environment variables at the edge.

Nothing else in openbuda reads the environment: the CLI builds ``Settings`` and passes it down.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    embedded: bool | None = None
    """One process owns the store: at start it re-queues every running task. Default: on
    SQLite yes, on PostgreSQL (scale-out: other processes' tasks are theirs) no."""
    run_workers: bool = True
    """``openbuda serve`` also runs tasks; ``false`` (``--no-workers``) serves the API only and
    leaves the tasks to ``openbuda worker`` processes."""
    max_concurrent_tasks: int = Field(default=64, ge=1, le=100_000)
    """Tasks one process runs at once."""
    max_tasks_per_space: int = Field(default=32, ge=1, le=100_000)
    """Tasks of one space running at once, across every process of the deployment."""
    max_tasks_per_agent: int = Field(default=32, ge=1, le=100_000)
    """Tasks of one agent running at once, across every process (they share its computer)."""
    tools: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """More agent tools, as ``module:attribute`` (comma-separated in ``OPENBUDA_TOOLS``): a
    ``Tool``, an iterable of tools, or a callable without arguments returning either. Every
    worker process loads them next to the built-in computer tools."""
    lease_seconds: float = Field(default=30.0, gt=0.05)
    heartbeat_seconds: float = Field(default=10.0, gt=0.01)
    poll_seconds: float = Field(default=1.0, gt=0.001)
    """How often idle workers look for queued tasks (local submissions wake them at once)."""
    model_retries: int = Field(default=4, ge=0, le=20)
    model_retry_base_seconds: float = Field(default=1.0, ge=0)
    model_timeout_seconds: float = Field(default=600.0, gt=0)
    block_real_models: bool = False
    """Tests set this: any non-test model fails instead of calling a provider."""

    # -- computers (ARCHITECTURE §6) -----------------------------------------------------------
    computer_backend: Literal["auto", "bwrap", "process"] = "auto"
    """``bwrap`` isolates each agent's computer with bubblewrap; ``process`` runs commands as
    plain host processes (development only, refused for external users' sessions); ``auto``
    takes ``bwrap`` when it is installed and works, else ``process`` with a loud warning."""
    computer_dir: Path | None = None
    """Where computers keep their files; default ``$OPENBUDA_HOME/computers``."""
    computer_uid_base: int = Field(default=200_000, ge=1000)
    """A server running as root runs each agent's sandbox as its own host uid, from this base."""
    computer_uid_count: int = Field(default=100_000, ge=1)
    computer_disk_quota: Literal["auto", "loop", "check"] = "auto"
    """``loop``: ``/agent`` is a loop-mounted ext4 image of ``limits.disk_mb`` (needs root);
    ``check``: usage is measured after each command; ``auto``: ``loop`` when root."""
    computer_sleep_check_seconds: float = Field(default=30.0, gt=0)
    """How often idle computers are looked for to put to sleep."""
    # -- Drive (ARCHITECTURE §7) -----------------------------------------------------------------
    drive_blobs: str | None = None
    """Where Drive content lives: a local directory (default ``$OPENBUDA_HOME/drive``) or
    ``s3://bucket/prefix`` for S3-compatible storage (extra ``s3``; credentials from the usual
    ``AWS_*`` variables or files)."""
    drive_s3_endpoint_url: str | None = None
    """The endpoint of S3-compatible storage other than AWS (MinIO, Ceph, moto…)."""
    drive_s3_region: str | None = None
    drive_max_file_bytes: int = Field(default=5 * 1024**3, ge=1)
    """The largest file one write may store (413 ``too_large`` past it)."""
    drive_quota_bytes: int | None = Field(default=50 * 1024**3, ge=0)
    """Bytes of live files each space's Drives may hold together (413 ``quota_exceeded`` past
    it); ``None``: no quota."""
    memory_max_bytes: int = Field(default=16 * 1024, ge=256)
    """How much of ``MEMORY.md`` goes into the context before each task."""

    secret_key: str | None = Field(default=None, min_length=16, repr=False)
    """The server's signing key (signed preview links). Default: a random key created once in
    ``$OPENBUDA_HOME/secret.key`` (mode 0600); every API process of a deployment needs the
    same key."""

    # -- the HTTP server (``openbuda serve``) ------------------------------------------------
    host: str = "127.0.0.1"
    """Interface ``openbuda serve`` listens on (``0.0.0.0`` for every interface)."""
    port: int = Field(default=8000, ge=0, le=65_535)
    public_url: str | None = None
    """The URL clients reach this server at, written to ``credentials.json``; default
    ``http://<host>:<port>`` (with ``127.0.0.1`` for a wildcard host)."""
    bootstrap_api_key: str | None = Field(default=None, repr=False)
    """The instance owner's API key (20-200 URL-safe characters) for automated deployments; used
    only while the store holds no key at all, ignored afterwards. Default: a random key."""
    rate_limit_per_min: int | None = Field(default=None, ge=1)
    """Requests per minute and API key; unset: no limit."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest JSON body accepted (413 beyond it)."""
    max_import_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest body of a session creation with ``history`` (413 beyond it)."""
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    """A comment line is sent on event streams after this long without data."""
    idempotency_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    """How long a response is kept for replays of its ``Idempotency-Key``."""
    metrics_enabled: bool = True
    """Serve Prometheus metrics at ``/metrics``."""
    log_format: str | None = None
    """``json`` or ``text``; default JSON when stderr is not a terminal."""
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    """OpenTelemetry traces (model and tool calls) are exported over OTLP/HTTP when set."""
    otel_service_name: str = Field(default="openbuda", validation_alias="OTEL_SERVICE_NAME")
    url: str | None = None
    """The server the SDK and CLI talk to (``OPENBUDA_URL``); default: the ``url`` of
    ``$OPENBUDA_HOME/credentials.json``, else ``http://127.0.0.1:8000``."""
    api_key: str | None = None
    """The API key of the SDK and CLI (``OPENBUDA_API_KEY``); default: the ``api_key`` of
    ``$OPENBUDA_HOME/credentials.json``."""

    def resolved_secret_key(self) -> bytes:
        """``secret_key``, else the key in ``$OPENBUDA_HOME/secret.key`` (created once, 0600).

        Blocking file I/O: async callers run it in a thread.
        """
        if self.secret_key is not None:
            return self.secret_key.encode()
        path = self.home / "secret.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:  # we create it: write it whole before anyone may read it
            with os.fdopen(descriptor, "w", encoding="ascii") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
        for _ in range(100):  # another process may be writing it this very moment
            key = path.read_text(encoding="ascii").strip()
            if key:
                return key.encode()
            time.sleep(0.01)
        raise RuntimeError(f"{str(path)!r} is empty: delete it or set OPENBUDA_SECRET_KEY")

    @field_validator("tools", mode="before")
    @classmethod
    def _split_tools(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def is_embedded(self) -> bool:
        """Whether this process alone owns the store (see ``embedded``)."""
        if self.embedded is not None:
            return self.embedded
        return not self.resolved_database_url().startswith("postgresql")

    def resolved_computer_dir(self) -> Path:
        return self.computer_dir or self.home / "computers"

    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite+aiosqlite:///{self.home / 'openbuda.db'}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url
