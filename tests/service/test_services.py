"""Agents, sessions and keys through the services, on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from openbuda.domain.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from openbuda.domain.principal import Principal
from openbuda.domain.records import AgentSettings, Role
from openbuda.ports import AgentPatch, NewApiKey, Store
from openbuda.service.keys import Bootstrapped, authenticate, bootstrap, hash_secret
from openbuda.service.sessions import HistoryMessage
from tests.harness import Harness, make_principal

pytestmark = pytest.mark.anyio


async def test_agents_need_admin_to_change_and_validate_their_fields(harness: Harness) -> None:
    runtime, owner = harness.runtime, harness.principal
    member = Principal(owner.space_id, owner.member_id, Role.MEMBER)
    with pytest.raises(Forbidden):
        await runtime.agents.create(member, name="x")
    with pytest.raises(ValidationFailed):
        await runtime.agents.create(owner, name="x" * 101)
    with pytest.raises(ValidationFailed):
        await runtime.agents.create(owner, name="x", model="gpt-4o")
    agent = await runtime.agents.create(
        owner, name="support", model="openai:gpt-4o-mini", settings=AgentSettings(max_steps=7)
    )
    assert (await runtime.agents.get(member, agent.id)).settings.max_steps == 7
    updated = await runtime.agents.update(
        owner, agent.id, AgentPatch(instructions="Be kind.", model=None, set_model=True)
    )
    assert updated.instructions == "Be kind." and updated.model is None
    assert updated.name == "support"
    with pytest.raises(Forbidden):
        await runtime.agents.delete(member, agent.id)
    page = await runtime.agents.list(member)
    assert [a.id for a in page.items] == [agent.id]
    await runtime.agents.delete(owner, agent.id)
    with pytest.raises(NotFound):
        await runtime.agents.get(owner, agent.id)


async def test_sessions_create_import_rename_list_and_delete(harness: Harness) -> None:
    runtime, principal = harness.runtime, harness.principal
    agent = await harness.agent()
    history = [HistoryMessage("user", f"question {i}") for i in range(3)] + [
        HistoryMessage("assistant", "answer")
    ]
    imported = await runtime.sessions.create(principal, agent.id, title="Imported", history=history)
    assert imported.last_seq == 5
    messages = await runtime.sessions.messages(principal, imported.id)
    assert [(m.role, m.text) for m in messages] == [(h.role, h.text) for h in history]
    other = await runtime.sessions.create(
        principal, agent.id, title="Billing", external_user_id="cust-1"
    )

    found = await runtime.sessions.list(principal, agent.id, query="bill")
    assert [s.id for s in found.items] == [other.id]
    by_user = await runtime.sessions.list(principal, agent.id, external_user_id="cust-1")
    assert [s.id for s in by_user.items] == [other.id]
    renamed = await runtime.sessions.rename(principal, imported.id, "Renamed")
    assert renamed.title == "Renamed"
    with pytest.raises(ValidationFailed):
        await runtime.sessions.rename(principal, imported.id, "x" * 201)
    with pytest.raises(ValidationFailed):
        await runtime.sessions.send(principal, imported.id, "")
    with pytest.raises(ValidationFailed):
        await runtime.sessions.send(principal, imported.id, "x" * 100_001)

    await runtime.sessions.delete(principal, imported.id)
    with pytest.raises(NotFound):
        await runtime.sessions.get(principal, imported.id)
    with pytest.raises(NotFound):
        await runtime.sessions.events(principal, imported.id)
    with pytest.raises(NotFound):
        await runtime.sessions.create(principal, "agt_missing")


async def test_bootstrap_creates_one_owner_key_even_when_raced(store: Store) -> None:
    now = datetime.now(UTC)
    results: list[Bootstrapped | None] = []

    async def attempt() -> None:
        results.append(await bootstrap(store, now))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(attempt)
    made = [r for r in results if r is not None]
    assert len(made) == 1
    async with store.read() as tx:
        assert await tx.any_api_key()
    first = made[0]
    assert first is not None
    principal = await authenticate(store, first.secret, now)
    assert principal.role is Role.OWNER and principal.is_instance_owner
    with pytest.raises(Unauthorized):
        await authenticate(store, "ob_not-a-key", now)
    with pytest.raises(ValidationFailed):
        await bootstrap(store, now, secret="short")


async def test_expired_and_revoked_keys_are_refused(store: Store) -> None:
    principal = await make_principal(store)
    now = datetime.now(UTC)
    async with store.write() as tx:
        expired = await tx.create_api_key(
            NewApiKey(
                principal.space_id,
                principal.member_id,
                "old",
                Role.MEMBER,
                hash_secret("ob_expired_secret_0000000"),
                "ob_expi",
                now - timedelta(days=1),
            ),
            now,
        )
        revoked = await tx.create_api_key(
            NewApiKey(
                principal.space_id,
                principal.member_id,
                "gone",
                Role.MEMBER,
                hash_secret("ob_revoked_secret_0000000"),
                "ob_revo",
                None,
            ),
            now,
        )
        await tx.revoke_api_key(principal.space_id, revoked.id, now)
    assert expired.expires_at is not None
    with pytest.raises(Unauthorized, match="expired"):
        await authenticate(store, "ob_expired_secret_0000000", now)
    with pytest.raises(Unauthorized):
        await authenticate(store, "ob_revoked_secret_0000000", now)
