"""A scale-out deployment on this machine: PostgreSQL, a model server, an API, some workers.

Every process has its own ``OPENBUDA_HOME`` (its machine); Drive content lives in one shared
directory (standing for S3). The model server answers with ``tests.scaleout.model:respond``;
the workers load the ``effect`` tool through ``OPENBUDA_TOOLS``.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Generator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openbuda.testing.cluster import (
    OpenbudaProcess,
    PgCluster,
    ProcessGroup,
    child_environment,
    free_port,
    log_probe,
)

__all__ = ["API_KEY", "Deployment", "deployment"]

ROOT: Final = Path(__file__).resolve().parents[2]
API_KEY: Final = "scaleout-" + "k" * 24
LEASE_SECONDS: Final = 3.0


@dataclass
class Deployment:
    cluster: PgCluster
    group: ProcessGroup
    model: OpenbudaProcess
    api: OpenbudaProcess
    workers: list[OpenbudaProcess]
    effect_log: Path
    directory: Path

    @property
    def api_url(self) -> str:
        assert self.api.base_url is not None
        return self.api.base_url


@contextmanager
def deployment(
    directory: Path,
    *,
    workers: int = 3,
    settings: Mapping[str, str] | None = None,
) -> Generator[Deployment]:
    """Start everything (the API first: it migrates the database), stop everything after."""
    with ExitStack() as stack:
        cluster = stack.enter_context(PgCluster.start())
        effect_log = directory / "effects.log"
        env = child_environment(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PYTHONUNBUFFERED="1",
            OPENBUDA_DATABASE_URL=cluster.url,
            OPENBUDA_DRIVE_BLOBS=str(directory / "blobs"),
            OPENBUDA_SECRET_KEY=secrets.token_urlsafe(24),
            OPENBUDA_BOOTSTRAP_API_KEY=API_KEY,
            OPENBUDA_LEASE_SECONDS=str(LEASE_SECONDS),
            OPENBUDA_HEARTBEAT_SECONDS="0.5",
            OPENBUDA_POLL_SECONDS="5",
            OPENBUDA_TOOLS="tests.scaleout.effects:tools",
            OPENBUDA_LOG_FORMAT="text",
            OPENBUDA_LOG_LEVEL="INFO",
            OPENAI_API_KEY="test",
            SCALEOUT_EFFECT_LOG=str(effect_log),
            **(settings or {}),
        )
        group = stack.enter_context(ProcessGroup(directory / "procs", env, cwd=ROOT))
        model_port = free_port()
        model = group.spawn(
            "model",
            [
                sys.executable,
                "-m",
                "openbuda.testing.openai_server",
                "--port",
                str(model_port),
                "--responder",
                "tests.scaleout.model:respond",
            ],
            ready=log_probe("openai_server listening"),
        )
        group.env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{model_port}/v1"
        api = group.api("api")
        started = [
            group.worker(f"w{n}", ready=cluster.registered(), wait=False)
            for n in range(1, workers + 1)
        ]
        for worker in started:
            worker.wait_ready()
        yield Deployment(cluster, group, model, api, started, effect_log, directory)
