"""Health, authentication, ``/v1/me``, API keys and their roles, spaces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.api.conftest import OWNER_KEY, Api, assert_error, make_api

from openbuda.ports import Store
from openbuda.testing import FakeClock

pytestmark = pytest.mark.anyio


async def test_health_needs_no_key(api: Api) -> None:
    response = await api.client_for(None).get("/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert isinstance(response.json()["version"], str)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/me",
        "/v1/api-keys",
        "/v1/spaces",
        "/v1/agents",
        "/v1/agents/agt_x/sessions",
        "/v1/sessions/ses_x",
        "/v1/sessions/ses_x/messages",
        "/v1/sessions/ses_x/events",
        "/v1/sessions/ses_x/events/stream",
        "/v1/tasks",
        "/v1/tasks/tsk_x",
    ],
)
async def test_every_route_but_health_needs_a_key(api: Api, path: str) -> None:
    anonymous = api.client_for(None)
    error = assert_error(await anonymous.get(path), 401, "unauthorized")
    assert "Bearer" in error["message"]
    response = await api.client_for("ob_not_a_key_at_all_0000000000").get(path)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    basic = await anonymous.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_error(basic, 401, "unauthorized")


async def test_me_describes_the_instance_owner(api: Api) -> None:
    response = await api.client.get("/v1/me")
    assert response.status_code == 200
    me = response.json()
    assert me["role"] == "owner"
    assert me["instance_owner"] is True
    assert me["member"]["role"] == "owner"
    assert me["space"]["id"].startswith("spc_")
    assert me["api_key"]["name"] == "bootstrap"
    assert me["api_key"]["prefix"] == OWNER_KEY[:7]
    assert "secret" not in me["api_key"]


async def test_api_keys_are_created_shown_once_listed_and_revoked(api: Api) -> None:
    created = await api.client.post(
        "/v1/api-keys", json={"name": "ci", "role": "admin", "expires_in_days": 30}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["secret"].startswith("ob_") and key["role"] == "admin"
    assert key["id"].startswith("key_") and key["expires_at"].endswith("Z")

    admin = api.client_for(key["secret"])
    me = (await admin.get("/v1/me")).json()
    assert me["role"] == "admin" and me["instance_owner"] is False
    listed = (await api.client.get("/v1/api-keys")).json()
    assert [k["name"] for k in listed["items"]] == ["bootstrap", "ci"]
    assert listed["next_cursor"] is None
    assert all("secret" not in k for k in listed["items"])

    default = (await api.client.post("/v1/api-keys", json={"name": "plain"})).json()
    assert default["role"] == "member" and default["expires_at"] is None

    page = (await api.client.get("/v1/api-keys", params={"limit": 2})).json()
    assert len(page["items"]) == 2 and page["next_cursor"] is not None
    rest = (
        await api.client.get("/v1/api-keys", params={"limit": 2, "cursor": page["next_cursor"]})
    ).json()
    assert [k["name"] for k in rest["items"]] == ["plain"] and rest["next_cursor"] is None
    assert_error(await api.client.get("/v1/api-keys?cursor=key_nope"), 400, "invalid_request")

    assert (await api.client.delete(f"/v1/api-keys/{key['id']}")).status_code == 204
    assert_error(await admin.get("/v1/me"), 401, "unauthorized")
    assert_error(await api.client.delete(f"/v1/api-keys/{key['id']}"), 404, "not_found")


async def test_roles_limit_what_a_key_may_do(api: Api) -> None:
    admin_key = (await api.client.post("/v1/api-keys", json={"name": "a", "role": "admin"})).json()
    member_key = (await api.client.post("/v1/api-keys", json={"name": "m"})).json()
    admin, member = api.client_for(admin_key["secret"]), api.client_for(member_key["secret"])

    # no key creates a key above its own role
    assert_error(
        await admin.post("/v1/api-keys", json={"name": "x", "role": "owner"}), 403, "forbidden"
    )
    assert (
        await admin.post("/v1/api-keys", json={"name": "x", "role": "admin"})
    ).status_code == 201
    assert_error(await member.post("/v1/api-keys", json={"name": "x"}), 403, "forbidden")
    assert_error(await member.get("/v1/api-keys"), 403, "forbidden")
    # the reserved name of the instance owner's keys
    assert_error(
        await admin.post("/v1/api-keys", json={"name": "bootstrap", "role": "admin"}),
        403,
        "forbidden",
    )

    # agents need admin; members work with sessions
    assert_error(await member.post("/v1/agents", json={"name": "x"}), 403, "forbidden")
    agent = await api.agent(admin)
    assert_error(
        await member.patch(f"/v1/agents/{agent['id']}", json={"name": "y"}), 403, "forbidden"
    )
    assert_error(await member.delete(f"/v1/agents/{agent['id']}"), 403, "forbidden")
    assert (await member.get(f"/v1/agents/{agent['id']}")).status_code == 200
    session = await api.session(agent["id"], member)
    assert (await member.get(f"/v1/sessions/{session['id']}")).status_code == 200

    # revoking: not above one's role, always oneself; never the last owner key
    me = (await api.client.get("/v1/me")).json()
    assert_error(await admin.delete(f"/v1/api-keys/{me['api_key']['id']}"), 403, "forbidden")
    assert_error(await api.client.delete(f"/v1/api-keys/{me['api_key']['id']}"), 409, "conflict")
    assert (await member.delete(f"/v1/api-keys/{member_key['id']}")).status_code == 204
    assert_error(await member.get("/v1/me"), 401, "unauthorized")

    # only the instance owner creates spaces
    assert_error(await admin.post("/v1/spaces", json={"name": "other"}), 403, "forbidden")


async def test_the_instance_owner_creates_spaces_with_their_owner_key(api: Api) -> None:
    response = await api.client.post("/v1/spaces", json={"name": "acme"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["space"]["name"] == "acme"
    assert created["api_key"]["role"] == "owner" and created["api_key"]["secret"]
    other = api.client_for(created["api_key"]["secret"])
    me = (await other.get("/v1/me")).json()
    assert me["space"]["id"] == created["space"]["id"]
    assert me["role"] == "owner" and me["instance_owner"] is False
    # an owner of another space is no instance owner
    assert_error(await other.post("/v1/spaces", json={"name": "x"}), 403, "forbidden")
    spaces = (await other.get("/v1/spaces")).json()
    assert [s["id"] for s in spaces["items"]] == [created["space"]["id"]]
    mine = (await api.client.get("/v1/spaces")).json()
    assert [s["name"] for s in mine["items"]] == ["default"]


async def test_an_expired_key_is_refused(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    async for api in make_api(store, tmp_path, clock=clock):
        created = await api.client.post(
            "/v1/api-keys", json={"name": "short", "expires_in_days": 1}
        )
        client = api.client_for(created.json()["secret"])
        assert (await client.get("/v1/agents")).status_code == 200
        clock.advance(timedelta(days=1, seconds=1).total_seconds())
        error = assert_error(await client.get("/v1/agents"), 401, "unauthorized")
        assert "expired" in error["message"]
