"""The first start (bootstrap, credentials.json) and ``openbuda serve`` as a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from tests.api.conftest import make_api
from tests.harness import engine_settings

from openbuda.api import create_app
from openbuda.api.bootstrap import public_url
from openbuda.domain.errors import ValidationFailed
from openbuda.ports import Store
from openbuda.settings import Settings
from openbuda.stores import open_store

pytestmark = pytest.mark.anyio


async def test_the_first_start_creates_and_saves_the_owner_key(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "credentials.json"
    secret = ""
    async for api in make_api(store, tmp_path, settings={"bootstrap_api_key": None}):
        assert len(api.announced) == 1
        secret = api.announced[0].split("shown once):")[1].split()[0]
        assert secret.startswith("ob_")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:8000", "api_key": secret}
        me = await api.client_for(secret).get("/v1/me")
        assert me.json()["instance_owner"] is True
    path.unlink()
    # later starts leave the stored key alone and ignore the bootstrap variable
    later = {"bootstrap_api_key": "ob_a_different_key_0123456789"}
    async for api in make_api(store, tmp_path, settings=later):
        assert api.announced == []
        assert not path.exists()
        assert (await api.client_for(secret).get("/v1/me")).status_code == 200
        response = await api.client_for(later["bootstrap_api_key"]).get("/v1/me")
        assert response.status_code == 401


def test_a_malformed_bootstrap_key_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="20-200 URL-safe"):
        create_app(engine_settings(tmp_path, bootstrap_api_key="short"))
    with pytest.raises(ValidationFailed):
        create_app(engine_settings(tmp_path, bootstrap_api_key="x" * 19 + "/"))


async def test_processes_starting_at_once_create_one_key(store_url: str, tmp_path: Path) -> None:
    stores = [open_store(store_url) for _ in range(3)]
    announced: list[str] = []
    try:
        apps = [
            create_app(engine_settings(tmp_path / str(i)), store=store, announce=announced.append)
            for i, store in enumerate(stores)
        ]

        async def start(app: object) -> None:
            async with LifespanManager(app, startup_timeout=30):  # type: ignore[arg-type]
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as group:
            for app in apps:
                group.start_soon(start, app)
    finally:
        for store in stores:
            await store.close()
    assert len(announced) == 1


def test_public_url() -> None:
    assert public_url(Settings(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert public_url(Settings(host="::", port=9000)) == "http://[::1]:9000"
    assert public_url(Settings(host="10.0.0.5")) == "http://10.0.0.5:8000"
    assert public_url(Settings(public_url="https://agents.example.com/")) == (
        "https://agents.example.com"
    )


SERVE = [sys.executable, "-c", "from openbuda.cli.main import main; main()", "serve"]


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_openbuda_serve(store_url: str, tmp_path: Path) -> None:
    """The real server: bootstrap, JSON logs, a live event stream over TCP, a clean stop."""
    port = _free_port()
    env = {
        **os.environ,
        "OPENBUDA_HOME": str(tmp_path),
        "OPENBUDA_BLOCK_REAL_MODELS": "true",
        "OPENBUDA_SSE_HEARTBEAT_SECONDS": "0.2",
    }
    env.pop("OPENBUDA_DATABASE_URL", None)
    process = _start([*SERVE, "--port", str(port)], env)
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            with anyio.fail_after(60):
                while process.poll() is None:
                    try:
                        if (await client.get("/v1/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await anyio.sleep(0.1)
            credentials = json.loads((tmp_path / "credentials.json").read_text())
            assert credentials["url"] == url
            client.headers["Authorization"] = f"Bearer {credentials['api_key']}"
            agent = (await client.post("/v1/agents", json={"name": "a"})).json()
            session = (await client.post(f"/v1/agents/{agent['id']}/sessions", json={})).json()
            lines: list[str] = []
            async with client.stream(
                "GET", f"/v1/sessions/{session['id']}/events/stream"
            ) as stream:
                async for line in stream.aiter_lines():
                    lines.append(line)
                    if line.startswith(":"):
                        break
            assert lines[:2] == ["id: 1", "event: session.created"]
            docs = await client.get("/v1/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
    finally:
        out, err = await anyio.to_thread.run_sync(_stop, process)
    # a graceful stop; uvicorn then re-raises the signal it caught
    assert process.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "Application shutdown complete" in err
    assert "shown once" in out and credentials["api_key"] in out
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "openbuda.access"]
    assert any(r.get("session_id") == session["id"] for r in access)
