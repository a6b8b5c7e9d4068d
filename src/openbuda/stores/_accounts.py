"""Writes of the SQL store that set up a space: agents, spaces, members and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, select, update

from openbuda.domain.errors import NotFound
from openbuda.domain.ids import new_id
from openbuda.domain.records import Agent, ApiKey, Member, Role, Space
from openbuda.ports import AgentPatch, NewAgent, NewApiKey
from openbuda.stores._codec import agent_from_row
from openbuda.stores._queries import p_str
from openbuda.stores._tasks import TaskWrites
from openbuda.stores.schema import agents, api_keys, events, members, sessions, spaces, tasks

__all__ = ["AccountWrites"]

_SPACE_EXISTS: Final = select(spaces.c.id).where(spaces.c.id == p_str("space"))
_MEMBER_EXISTS: Final = select(members.c.id).where(
    members.c.id == p_str("member"), members.c.space_id == p_str("space")
)


class AccountWrites(TaskWrites):
    """``SessionWriter``'s agent methods and ``KeyWriter`` over one write transaction."""

    # -- agents -----------------------------------------------------------------------------

    async def create_agent(self, request: NewAgent, now: datetime) -> Agent:
        if (await self._execute(_SPACE_EXISTS, {"space": request.space_id})).first() is None:
            raise NotFound.of("space", request.space_id)
        agent = Agent(
            id=request.agent_id or new_id("agent"),
            space_id=request.space_id,
            name=request.name,
            description=request.description,
            instructions=request.instructions,
            model=request.model,
            settings=request.settings,
            created_at=now,
            updated_at=now,
        )
        await self._execute(
            agents.insert(),
            {
                "id": agent.id,
                "space_id": agent.space_id,
                "name": agent.name,
                "description": agent.description,
                "instructions": agent.instructions,
                "model": agent.model,
                "settings": agent.settings.model_dump_json(),
                "idle_timeout_s": agent.settings.idle_timeout_s,
                "created_at": now,
                "updated_at": now,
            },
        )
        return agent

    async def update_agent(
        self, space_id: str, agent_id: str, patch: AgentPatch, now: datetime
    ) -> Agent | None:
        values: dict[str, Any] = {"updated_at": now}
        if patch.name is not None:
            values["name"] = patch.name
        if patch.description is not None:
            values["description"] = patch.description
        if patch.instructions is not None:
            values["instructions"] = patch.instructions
        if patch.set_model or patch.model is not None:
            values["model"] = patch.model
        if patch.settings is not None:
            values["settings"] = patch.settings.model_dump_json()
            values["idle_timeout_s"] = patch.settings.idle_timeout_s
        statement = (
            update(agents)
            .where(agents.c.id == agent_id, agents.c.space_id == space_id)
            .values(values)
            .returning(*agents.c)
        )
        row = (await self._execute(statement)).first()
        return None if row is None else agent_from_row(row)

    async def delete_agent(self, space_id: str, agent_id: str) -> bool:
        agent_sessions = select(sessions.c.id).where(
            sessions.c.agent_id == agent_id, sessions.c.space_id == space_id
        )
        if self._traits.row_locks:  # sessions before their tasks, in one order
            await self._execute(agent_sessions.order_by(sessions.c.id).with_for_update())
        await self._execute(
            delete(events).where(
                events.c.session_id.in_(agent_sessions), events.c.space_id == space_id
            )
        )
        await self._execute(
            delete(tasks).where(tasks.c.agent_id == agent_id, tasks.c.space_id == space_id)
        )
        await self._execute(
            delete(sessions).where(sessions.c.agent_id == agent_id, sessions.c.space_id == space_id)
        )
        statement = delete(agents).where(agents.c.id == agent_id, agents.c.space_id == space_id)
        return (await self._execute(statement)).rowcount == 1

    # -- spaces, members and keys -----------------------------------------------------------

    async def lock_keys(self) -> None:
        if self._traits.keys_lock is not None:
            await self._execute(self._traits.keys_lock)

    async def create_space(self, name: str, now: datetime) -> Space:
        space = Space(id=new_id("space"), name=name, created_at=now)
        await self._execute(
            spaces.insert(), {"id": space.id, "name": space.name, "created_at": now}
        )
        return space

    async def create_member(self, space_id: str, name: str, role: Role, now: datetime) -> Member:
        if (await self._execute(_SPACE_EXISTS, {"space": space_id})).first() is None:
            raise NotFound.of("space", space_id)
        member = Member(
            id=new_id("member"), space_id=space_id, name=name, role=role, created_at=now
        )
        await self._execute(
            members.insert(),
            {
                "id": member.id,
                "space_id": space_id,
                "name": name,
                "role": role.value,
                "created_at": now,
            },
        )
        return member

    async def create_api_key(self, request: NewApiKey, now: datetime) -> ApiKey:
        scope = {"member": request.member_id, "space": request.space_id}
        if (await self._execute(_MEMBER_EXISTS, scope)).first() is None:
            raise NotFound.of("member", request.member_id)
        key = ApiKey(
            id=request.key_id or new_id("api_key"),
            space_id=request.space_id,
            member_id=request.member_id,
            name=request.name,
            role=request.role,
            prefix=request.prefix,
            created_at=now,
            expires_at=request.expires_at,
            last_used_at=None,
        )
        await self._execute(
            api_keys.insert(),
            {
                "id": key.id,
                "space_id": key.space_id,
                "member_id": key.member_id,
                "name": key.name,
                "role": key.role.value,
                "secret_hash": request.secret_hash,
                "prefix": key.prefix,
                "created_at": now,
                "expires_at": key.expires_at,
                "last_used_at": None,
                "revoked_at": None,
            },
        )
        return key

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        await self._execute(
            update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now)
        )

    async def revoke_api_key(self, space_id: str, key_id: str, now: datetime) -> bool:
        statement = (
            update(api_keys)
            .where(
                api_keys.c.id == key_id,
                api_keys.c.space_id == space_id,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        return (await self._execute(statement)).rowcount == 1
