"""What the edge refuses and how: body limits, content types, malformed input, framework
errors in the API's shape, idempotency keys and rate limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from tests.api.conftest import Api, assert_error, make_api

from openbuda.api.idempotency import IdempotencyCache
from openbuda.api.limits import RateLimiter
from openbuda.domain.errors import Conflict, RateLimited, ValidationFailed
from openbuda.ports import Store
from openbuda.testing import reply

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


async def test_bodies_over_the_limit_are_413(store: Store, tmp_path: Path) -> None:
    async for api in make_api(store, tmp_path, settings={"max_import_body_bytes": 3 * MIB}):
        error = assert_error(
            await api.client.post("/v1/agents", json={"name": "x", "instructions": "a" * MIB}),
            413,
            "too_large",
        )
        assert error["details"]["limit_bytes"] == MIB
        agent = await api.agent()

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"name": "'
            for _ in range(20):
                yield b"a" * 65536
            yield b'"}'

        assert_error(
            await api.client.post(
                "/v1/agents", content=chunks(), headers={"Content-Type": "application/json"}
            ),
            413,
            "too_large",
        )
        # the session import route takes more than 1 MiB ...
        history = [{"role": "user", "text": "h" * 50_000} for _ in range(40)]
        imported = await api.client.post(
            f"/v1/agents/{agent['id']}/sessions", json={"history": history}
        )
        assert imported.status_code == 201, imported.text[:300]
        assert imported.json()["last_seq"] == 41
        # ... up to its own limit
        assert_error(
            await api.client.post(
                f"/v1/agents/{agent['id']}/sessions", json={"history": history * 2}
            ),
            413,
            "too_large",
        )
        # and the large limit is for that route only
        session = imported.json()
        assert_error(
            await api.client.post(
                f"/v1/sessions/{session['id']}/messages", json={"text": "a" * (MIB + 10)}
            ),
            413,
            "too_large",
        )


async def test_content_type_json_and_framework_errors(api: Api) -> None:
    bad_type = await api.client.post(
        "/v1/agents",
        content=b"name=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(bad_type, 415, "unsupported_media_type")
    untyped = await api.client.post("/v1/agents", content=json.dumps({"name": "untyped"}))
    assert untyped.status_code == 201, untyped.text
    problem = await api.client.post(
        "/v1/agents", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in assert_error(problem, 400, "invalid_request")["message"]
    for body in (b"[]", b'"name"', b"null", b"12"):
        response = await api.client.post(
            "/v1/agents", content=body, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 422, "validation_error")
    assert_error(await api.client.get("/v1/nothing"), 404, "not_found")
    assert_error(await api.client.get("/nothing"), 404, "not_found")
    not_allowed = await api.client.put("/v1/agents", json={})
    assert_error(not_allowed, 405, "method_not_allowed")
    assert "GET" in not_allowed.headers["allow"]
    assert_error(await api.client.delete("/v1/tasks"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agents",
        "/v1/api-keys",
        "/v1/spaces",
        "/v1/tasks",
        "/v1/agents/{agent}/sessions",
        "/v1/sessions/{session}/messages",
        "/v1/sessions/{session}/events",
    ],
)
async def test_list_limits_and_cursors(api: Api, path: str) -> None:
    agent = await api.agent()
    session = await api.session(agent["id"])
    url = path.format(agent=agent["id"], session=session["id"])
    for limit in ("0", "501", "-1", "ten", "1e3"):
        assert_error(await api.client.get(url, params={"limit": limit}), 422, "validation_error")
    assert (await api.client.get(url, params={"limit": 500})).status_code == 200
    for cursor in ("!!!", "not-a-cursor", "eyJ4IjoxfQ", "a" * 1001, "\x00", "9" * 30):
        response = await api.client.get(url, params={"cursor": cursor})
        assert response.status_code in (400, 422), (cursor, response.text)
        code = "invalid_request" if response.status_code == 400 else "validation_error"
        assert_error(response, response.status_code, code)


async def test_malformed_ids_query_text_and_numbers(api: Api) -> None:
    agent = await api.agent()
    for bad in ("%00", "x" * 300, "a%20b", "%E2%80%AE", "..", "%ED%A0%80"):
        for path in (
            f"/v1/agents/{bad}",
            f"/v1/sessions/{bad}",
            f"/v1/sessions/{bad}/events",
            f"/v1/tasks/{bad}",
            f"/v1/agents/{bad}/sessions",
        ):
            response = await api.client.get(path)
            assert response.status_code == 404, (path, response.text)
        assert_error(await api.client.delete(f"/v1/api-keys/{bad}"), 404, "not_found")
    sessions = f"/v1/agents/{agent['id']}/sessions"
    for params in ({"q": "\x00"}, {"external_user_id": "a\x00b"}, {"q": "x" * 201}):
        assert_error(await api.client.get(sessions, params=params), 422, "validation_error")
    assert (await api.client.get("/v1/tasks", params={"session_id": "\x00"})).json()["items"] == []
    session = await api.session(agent["id"])
    for after in (str(2**31), str(2**63), "-5"):
        assert_error(
            await api.client.get(f"/v1/sessions/{session['id']}/events", params={"after": after}),
            422,
            "validation_error",
        )


async def test_idempotency_keys(api: Api) -> None:
    headers = {"Idempotency-Key": "create-agent-1"}
    first = await api.client.post("/v1/agents", json={"name": "once"}, headers=headers)
    again = await api.client.post("/v1/agents", json={"name": "once"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len((await api.client.get("/v1/agents")).json()["items"]) == 1
    assert_error(
        await api.client.post("/v1/agents", json={"name": "other"}, headers=headers),
        422,
        "validation_error",
    )
    # another API key has its own keys
    other = api.client_for(
        (await api.client.post("/v1/api-keys", json={"name": "k", "role": "admin"})).json()[
            "secret"
        ]
    )
    mine = await other.post("/v1/agents", json={"name": "once"}, headers=headers)
    assert mine.status_code == 201 and mine.json()["id"] != first.json()["id"]

    session = await api.session(first.json()["id"])
    api.model.add(reply("one answer"))
    message_headers = {"Idempotency-Key": "msg-1"}
    sent = await api.client.post(
        f"/v1/sessions/{session['id']}/messages", json={"text": "hi"}, headers=message_headers
    )
    resent = await api.client.post(
        f"/v1/sessions/{session['id']}/messages", json={"text": "hi"}, headers=message_headers
    )
    assert sent.status_code == resent.status_code == 202
    assert sent.json() == resent.json()
    await api.wait_task(sent.json()["task_id"])
    assert (await api.client.get(f"/v1/sessions/{session['id']}")).json()["task_count"] == 1

    # a failed request keeps nothing: the retry runs
    failing = {"Idempotency-Key": "bad-then-good"}
    assert_error(
        await api.client.post("/v1/agents/agt_missing/sessions", json={}, headers=failing),
        404,
        "not_found",
    )
    assert_error(
        await api.client.post("/v1/agents", json={"name": "x"}, headers={"Idempotency-Key": "a b"}),
        400,
        "invalid_request",
    )


async def test_idempotency_cache_rules() -> None:
    from starlette.responses import Response

    now = [0.0]
    cache = IdempotencyCache(10, capacity=2, clock=lambda: now[0])
    runs: list[int] = []
    gate = anyio.Event()

    async def produce() -> Response:
        runs.append(1)
        await gate.wait()
        return Response(b"ok", status_code=201)

    async with anyio.create_task_group() as group:
        group.start_soon(cache.run, "key", "k", "f", produce)
        await anyio.sleep(0.01)
        with pytest.raises(Conflict):
            await cache.run("key", "k", "f", produce)
        gate.set()
    replay = await cache.run("key", "k", "f", produce)
    assert replay.body == b"ok" and replay.headers["idempotent-replayed"] == "true"
    with pytest.raises(ValidationFailed):
        await cache.run("key", "k", "other", produce)
    now[0] = 11.0
    await cache.run("key", "k", "other", produce)  # expired: runs again
    assert len(runs) == 2
    for name in ("a", "b", "c"):
        await cache.run("key", name, "f", produce)
    assert len(cache) == 2


async def test_rate_limits_per_api_key(store: Store, tmp_path: Path) -> None:
    async for api in make_api(store, tmp_path, settings={"rate_limit_per_min": 5}):
        statuses = [(await api.client.get("/v1/agents")).status_code for _ in range(5)]
        assert statuses == [200] * 5
        limited = await api.client.get("/v1/agents")
        error = assert_error(limited, 429, "rate_limited")
        assert error["details"]["limit_per_min"] == 5
        assert int(limited.headers["retry-after"]) >= 1
        assert (await api.client_for(None).get("/v1/health")).status_code == 200


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        limiter.check("k")
    with pytest.raises(RateLimited) as raised:
        limiter.check("k")
    assert raised.value.details["retry_after_s"] == 1
    limiter.check("other")
    now[0] = 1.0
    limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")


async def test_requests_before_startup_are_503(tmp_path: Path) -> None:
    from tests.harness import engine_settings

    from openbuda.api import create_app

    app = create_app(engine_settings(tmp_path))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://test"
    ) as client:
        response = await client.get("/v1/agents", headers={"Authorization": "Bearer x"})
    assert_error(response, 503, "unavailable")
