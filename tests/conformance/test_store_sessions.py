"""Store conformance: sessions and their derived status, lists and cursors, agents, API keys."""

from __future__ import annotations

from typing import Any

import pytest

from openbuda.domain.errors import InvalidRequest, NotFound
from openbuda.domain.ids import new_id
from openbuda.domain.records import AgentSettings, Role, Session
from openbuda.domain.states import SessionStatus, TaskStatus
from openbuda.ports import (
    AgentPatch,
    ListSessions,
    ListTasks,
    NewAgent,
    NewSession,
    NewTask,
)
from openbuda.stores import SqlStore

from .store_world import T0, World, at, key_request, message, question

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------------------------------
# Sessions


async def test_session_status_is_derived_when_read(store: SqlStore) -> None:
    world = await World.make(store, idle_timeout_s=60)
    session = await world.session(when=T0)
    assert (await world.get_session(session, at(59))).status is SessionStatus.IDLE
    assert (await world.get_session(session, at(60))).status is SessionStatus.DORMANT
    task = await world.task(session)
    assert (await world.get_session(session, at(600))).status is SessionStatus.WORKING
    running = await world.start(task)
    assert (await world.get_session(session, at(600))).status is SessionStatus.WORKING
    asked = question("Which file?")
    waiting = await world.change(running, TaskStatus.WAITING, question=asked, clear_lease=True)
    assert waiting is not None
    found = await world.get_session(session, at(600))
    assert (found.status, found.open_question) == (SessionStatus.WAITING, asked)
    await world.change(waiting, TaskStatus.CANCELLED)
    found = await world.get_session(session, at(30))
    assert (found.status, found.open_question) == (SessionStatus.IDLE, None)


async def test_create_session_needs_an_agent_of_the_space(world: World) -> None:
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.create_session(NewSession(world.space.id, "agt_missing"), T0)


async def test_create_get_rename_and_lock_a_session(world: World) -> None:
    session = await world.session("First", when=at(1), external_user_id="cust-7")
    assert (session.title, session.external_user_id, session.status) == (
        "First",
        "cust-7",
        SessionStatus.IDLE,
    )
    assert session.id.startswith("ses_")
    assert await world.get_session(session, at(1)) == session
    async with world.store.write() as tx:
        assert await tx.rename_session(world.space.id, session.id, "Renamed")
        assert not await tx.rename_session(world.space.id, "ses_missing", "x")
        locked = await tx.lock_session(world.space.id, session.id, at(1))
        assert await tx.lock_session(world.space.id, "ses_missing", at(1)) is None
    assert locked is not None
    assert locked.title == "Renamed"


async def test_create_session_with_a_chosen_id(world: World) -> None:
    async with world.store.write() as tx:
        chosen = await tx.create_session(
            NewSession(world.space.id, world.agent.id, session_id="ses_chosen"), T0
        )
    assert chosen.id == "ses_chosen"


async def make_sessions_in_every_status(world: World) -> dict[SessionStatus, list[str]]:
    """Nine sessions, activity 100 s apart; read at 1000 s with a 600 s idle timeout.

    Newest first per status: working [5, 0], waiting [6, 1], dormant [4, 3, 2], idle [8, 7].
    """
    sessions = [await world.session(f"Session {n}", when=at(n * 100)) for n in range(9)]
    for n in (0, 5):
        await world.task_in(sessions[n], TaskStatus.QUEUED if n else TaskStatus.RUNNING)
    for n in (1, 6):
        await world.task_in(sessions[n], TaskStatus.WAITING)
    await world.task_in(sessions[2], TaskStatus.COMPLETED)

    def ids(*numbers: int) -> list[str]:
        return [sessions[n].id for n in numbers]

    return {
        SessionStatus.WORKING: ids(5, 0),
        SessionStatus.WAITING: ids(6, 1),
        SessionStatus.DORMANT: ids(4, 3, 2),
        SessionStatus.IDLE: ids(8, 7),
    }


async def all_pages(world: World, limit: int, **filters: Any) -> list[Session]:
    found: list[Session] = []
    cursor: str | None = None
    for _ in range(50):
        async with world.store.read() as tx:
            page = await tx.list_sessions(
                ListSessions(
                    world.space.id, world.agent.id, at(1000), limit=limit, cursor=cursor, **filters
                )
            )
        assert len(page.items) <= limit
        found += page.items
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [1, 2, 50])
async def test_list_sessions_filters_status_across_pages(store: SqlStore, limit: int) -> None:
    world = await World.make(store, idle_timeout_s=600)
    expected = await make_sessions_in_every_status(world)
    for status, ids in expected.items():
        found = await all_pages(world, limit, status=status)
        assert [session.id for session in found] == ids, status
        assert {session.status for session in found} == {status}
    everything = await all_pages(world, limit)
    assert [session.title for session in everything] == [f"Session {n}" for n in range(8, -1, -1)]


async def test_list_sessions_by_title_and_external_user(world: World) -> None:
    await world.session("Invoice 100% paid", external_user_id="u1")
    await world.session("invoice_2", external_user_id="u2")
    await world.session("Other", external_user_id="u1")

    async def titles(**filters: Any) -> list[str]:
        async with world.store.read() as tx:
            page = await tx.list_sessions(
                ListSessions(world.space.id, world.agent.id, T0, **filters)
            )
        return sorted(session.title for session in page.items)

    assert await titles(query="INVOICE") == ["Invoice 100% paid", "invoice_2"]
    assert await titles(query="100%") == ["Invoice 100% paid"]
    assert await titles(query="e_") == ["invoice_2"]
    assert await titles(external_user_id="u1") == ["Invoice 100% paid", "Other"]
    assert await titles(external_user_id="u1", query="other") == ["Other"]
    assert await titles(query="nothing") == []


async def test_list_sessions_of_an_unknown_agent_is_empty(world: World) -> None:
    await world.session()
    async with world.store.read() as tx:
        page = await tx.list_sessions(ListSessions(world.space.id, "agt_missing", T0))
    assert (page.items, page.next_cursor) == ([], None)


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !!",
        "bm90IGpzb24",
        "WyJ4Il0",
        "WyJzZXMiLDEsMl0",
        "",
        "WyJzZXMiLCIyMDI1IiwiaWQiXQ",
    ],
)
async def test_malformed_cursors_are_invalid_requests(world: World, cursor: str) -> None:
    async with world.store.read() as tx:
        with pytest.raises(InvalidRequest):
            await tx.list_sessions(ListSessions(world.space.id, world.agent.id, T0, cursor=cursor))
        with pytest.raises(InvalidRequest):
            await tx.list_tasks(ListTasks(world.space.id, cursor=cursor))
        with pytest.raises(InvalidRequest):
            await tx.list_agents(world.space.id, 10, cursor)


async def test_a_cursor_of_another_list_is_invalid(world: World) -> None:
    for n in range(3):
        await world.task(await world.session(), at(n))
    async with world.store.read() as tx:
        page = await tx.list_tasks(ListTasks(world.space.id, limit=1))
        assert page.next_cursor is not None
        with pytest.raises(InvalidRequest):
            await tx.list_sessions(
                ListSessions(world.space.id, world.agent.id, T0, cursor=page.next_cursor)
            )
        with pytest.raises(InvalidRequest):
            await tx.list_tasks(ListTasks(world.space.id, limit=0))


async def test_delete_session_takes_its_events_and_tasks(world: World) -> None:
    doomed, kept = await world.session(), await world.session()
    for session in (doomed, kept):
        task = await world.task(session)
        async with world.store.write() as tx:
            await tx.append(world.space.id, session.id, [message("hi", task.id)], T0)
    async with world.store.write() as tx:
        assert await tx.delete_session(world.space.id, doomed.id)
        assert not await tx.delete_session(world.space.id, doomed.id)
    async with world.store.read() as tx:
        assert await tx.get_session(world.space.id, doomed.id, T0) is None
        assert (await tx.list_tasks(ListTasks(world.space.id, session_id=doomed.id))).items == []
        assert len((await tx.list_tasks(ListTasks(world.space.id))).items) == 1
    assert await world.events(doomed) == []
    assert len(await world.events(kept)) == 1


# ---------------------------------------------------------------------------------------------
# Tasks list


async def test_list_tasks_newest_first_with_filters(world: World) -> None:
    first, second = await world.session(), await world.session()
    old = await world.task(first, at(1))
    waiting = await world.task_in(second, TaskStatus.WAITING, at(2))
    new = await world.task(first, at(3))
    async with world.store.write() as tx:
        other_agent = await tx.create_agent(NewAgent(world.space.id, "other"), T0)
        elsewhere = await tx.create_session(NewSession(world.space.id, other_agent.id), T0)
        foreign = await tx.insert_task(
            NewTask(world.space.id, other_agent.id, elsewhere.id, new_id("task"), None, at(4))
        )

    async def ids(limit: int = 50, **filters: Any) -> list[str]:
        found: list[str] = []
        cursor: str | None = None
        while True:
            async with world.store.read() as tx:
                page = await tx.list_tasks(
                    ListTasks(world.space.id, limit=limit, cursor=cursor, **filters)
                )
            found += [task.id for task in page.items]
            if (cursor := page.next_cursor) is None:
                return found

    every = [foreign.id, new.id, waiting.id, old.id]
    assert await ids() == every
    assert await ids(limit=1) == every
    assert await ids(limit=3) == every
    assert await ids(status=TaskStatus.WAITING) == [waiting.id]
    assert await ids(session_id=first.id) == [new.id, old.id]
    assert await ids(agent_id=world.agent.id, limit=1) == [new.id, waiting.id, old.id]
    assert await ids(agent_id=other_agent.id) == [foreign.id]


# ---------------------------------------------------------------------------------------------
# Agents


async def test_agents_create_get_update_and_list(world: World) -> None:
    async with world.store.write() as tx:
        created = await tx.create_agent(
            NewAgent(
                world.space.id,
                "writer",
                description="Writes",
                instructions="Be terse.",
                model="openai:gpt-4o-mini",
                settings=AgentSettings(max_steps=7, tools=["shell"]),
            ),
            at(1),
        )
    async with world.store.read() as tx:
        assert await tx.get_agent(world.space.id, created.id) == created
    async with world.store.write() as tx:
        renamed = await tx.update_agent(
            world.space.id, created.id, AgentPatch(name="editor"), at(2)
        )
        cleared = await tx.update_agent(
            world.space.id,
            created.id,
            AgentPatch(set_model=True, settings=AgentSettings(idle_timeout_s=5)),
            at(3),
        )
        assert await tx.update_agent(world.space.id, "agt_missing", AgentPatch(), T0) is None
    assert renamed is not None
    assert cleared is not None
    assert (renamed.name, renamed.model, renamed.updated_at) == (
        "editor",
        "openai:gpt-4o-mini",
        at(2),
    )
    assert (cleared.name, cleared.model, cleared.description) == ("editor", None, "Writes")
    assert cleared.settings == AgentSettings(idle_timeout_s=5)
    assert cleared.created_at == at(1)

    async with world.store.read() as tx:
        first = await tx.list_agents(world.space.id, 1, None)
        assert first.next_cursor is not None
        second = await tx.list_agents(world.space.id, 1, first.next_cursor)
    assert [agent.id for agent in first.items + second.items] == [world.agent.id, created.id]
    assert second.next_cursor is None


async def test_an_updated_idle_timeout_changes_session_status(world: World) -> None:
    session = await world.session(when=T0)
    assert (await world.get_session(session, at(100))).status is SessionStatus.IDLE
    async with world.store.write() as tx:
        patch = AgentPatch(settings=AgentSettings(idle_timeout_s=50))
        await tx.update_agent(world.space.id, world.agent.id, patch, T0)
    assert (await world.get_session(session, at(100))).status is SessionStatus.DORMANT
    async with world.store.read() as tx:
        page = await tx.list_sessions(
            ListSessions(world.space.id, world.agent.id, at(100), status=SessionStatus.DORMANT)
        )
    assert [found.id for found in page.items] == [session.id]


async def test_delete_agent_takes_its_sessions_tasks_and_events(world: World) -> None:
    session = await world.session()
    task = await world.task(session)
    async with world.store.write() as tx:
        await tx.append(world.space.id, session.id, [message("hi", task.id)], T0)
        other = await tx.create_agent(NewAgent(world.space.id, "other"), T0)
        kept = await tx.create_session(NewSession(world.space.id, other.id), T0)
        await tx.append(world.space.id, kept.id, [message("kept")], T0)
    async with world.store.write() as tx:
        assert await tx.delete_agent(world.space.id, world.agent.id)
        assert not await tx.delete_agent(world.space.id, world.agent.id)
    async with world.store.read() as tx:
        assert await tx.get_agent(world.space.id, world.agent.id) is None
        assert await tx.get_session(world.space.id, session.id, T0) is None
        assert await tx.get_task(world.space.id, task.id) is None
        assert await tx.get_session(world.space.id, kept.id, T0) is not None
    assert await world.events(session) == []
    assert len(await world.events(kept)) == 1


async def test_create_agent_needs_its_space(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        async with store.write() as tx:
            await tx.create_agent(NewAgent("spc_missing", "x"), T0)


# ---------------------------------------------------------------------------------------------
# Spaces, members and API keys


async def test_api_keys_lifecycle(store: SqlStore) -> None:
    async with store.read() as tx:
        assert not await tx.any_api_key()
    world = await World.make(store)
    async with store.write() as tx:
        await tx.lock_keys()
        key = await tx.create_api_key(key_request(world, "a" * 64, expires_at=at(3600)), at(1))
        other = await tx.create_api_key(key_request(world, "b" * 64, key_id="key_chosen"), at(2))
    assert (key.role, key.prefix, key.expires_at, key.last_used_at) == (
        Role.ADMIN,
        "ob_abcd",
        at(3600),
        None,
    )
    assert other.id == "key_chosen"
    async with store.read() as tx:
        assert await tx.any_api_key()
        assert await tx.get_space(world.space.id) == world.space
        found = await tx.find_api_key("a" * 64)
        assert found == (key, world.member)
        assert await tx.find_api_key("c" * 64) is None
    async with store.write() as tx:
        await tx.touch_api_key(key.id, at(50))
        assert await tx.revoke_api_key(world.space.id, other.id, at(60))
        assert not await tx.revoke_api_key(world.space.id, other.id, at(61))
    async with store.read() as tx:
        found = await tx.find_api_key("a" * 64)
        assert found is not None
        assert found[0].last_used_at == at(50)
        assert await tx.find_api_key("b" * 64) is None, "revoked keys do not authenticate"
        listed = await tx.list_api_keys(world.space.id)
    assert [(k.id, k.revoked_at) for k in listed] == [(key.id, None), (other.id, at(60))]


async def test_keys_and_members_need_their_space_and_member(world: World) -> None:
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.create_member("spc_missing", "x", Role.MEMBER, T0)
    other = await World.make(world.store, "two")
    with pytest.raises(NotFound):
        async with world.store.write() as tx:
            await tx.create_api_key(key_request(world, "d" * 64, member_id=other.member.id), T0)
