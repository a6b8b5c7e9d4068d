"""Agents: identity, instructions, model and settings. Changing them needs the admin role."""

from __future__ import annotations

import re

from openbuda.domain.drive import DriveRef
from openbuda.domain.errors import NotFound, ValidationFailed
from openbuda.domain.principal import Principal
from openbuda.domain.records import Agent, AgentSettings, Role
from openbuda.domain.validation import check_limit, check_text
from openbuda.ports import AgentPatch, NewAgent, Page
from openbuda.service.deps import ServiceDeps

__all__ = ["AgentService", "check_model_spec"]

_MODEL_SPEC = re.compile(r"^[a-z][a-z0-9-]*:\S{1,200}$")


def check_model_spec(model: str | None) -> str | None:
    """``provider:model`` or ``None`` (the server's default model)."""
    if model is None:
        return None
    if not _MODEL_SPEC.match(model):
        raise ValidationFailed(
            f"model must look like 'provider:model' (e.g. 'openai:gpt-4o-mini'), got {model!r}",
            details={"field": "model"},
        )
    return model


class AgentService:
    def __init__(self, deps: ServiceDeps) -> None:
        self._deps = deps

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        description: str = "",
        instructions: str = "",
        model: str | None = None,
        settings: AgentSettings | None = None,
    ) -> Agent:
        principal.require(Role.ADMIN, "creating an agent")
        check_text(name, "name", "agent_name", allow_empty=False)
        check_text(description, "description", "agent_description")
        check_text(instructions, "instructions", "agent_instructions")
        request = NewAgent(
            principal.space_id,
            name,
            description,
            instructions,
            check_model_spec(model),
            settings or AgentSettings(),
        )
        async with self._deps.store.write() as tx:
            return await tx.create_agent(request, self._deps.clock.now())

    async def get(self, principal: Principal, agent_id: str) -> Agent:
        async with self._deps.store.read() as tx:
            agent = await tx.get_agent(principal.space_id, agent_id)
        if agent is None:
            raise NotFound.of("agent", agent_id)
        return agent

    async def list(
        self, principal: Principal, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Agent]:
        check_limit(limit)
        async with self._deps.store.read() as tx:
            return await tx.list_agents(principal.space_id, limit, cursor)

    async def update(self, principal: Principal, agent_id: str, patch: AgentPatch) -> Agent:
        principal.require(Role.ADMIN, "changing an agent")
        if patch.name is not None:
            check_text(patch.name, "name", "agent_name", allow_empty=False)
        if patch.description is not None:
            check_text(patch.description, "description", "agent_description")
        if patch.instructions is not None:
            check_text(patch.instructions, "instructions", "agent_instructions")
        if patch.set_model:
            check_model_spec(patch.model)
        async with self._deps.store.write() as tx:
            agent = await tx.update_agent(
                principal.space_id, agent_id, patch, self._deps.clock.now()
            )
        if agent is None:
            raise NotFound.of("agent", agent_id)
        return agent

    async def delete(self, principal: Principal, agent_id: str) -> None:
        principal.require(Role.ADMIN, "deleting an agent")
        async with self._deps.store.write() as tx:
            if not await tx.delete_agent(principal.space_id, agent_id):
                raise NotFound.of("agent", agent_id)
            await tx.delete_drive(DriveRef(principal.space_id, agent_id))
        await self._deps.on_agent_deleted(agent_id)
