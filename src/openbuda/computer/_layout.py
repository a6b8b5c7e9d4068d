"""Where a computer's files live on the host (under ``$OPENBUDA_HOME/computers``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from openbuda.domain.errors import InvalidRequest

__all__ = ["ComputerLayout"]

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_id_text(value: str) -> str:
    """An id used as a directory name: letters, digits, ``_`` and ``-`` only."""
    if not _SAFE_ID.fullmatch(value):
        raise InvalidRequest(f"{value!r} is not a valid id")
    return value


@dataclass(frozen=True, slots=True)
class ComputerLayout:
    base: Path

    def agent_home(self, agent_id: str) -> Path:
        return self.base / "agents" / validate_id_text(agent_id)

    def agent_files(self, agent_id: str) -> Path:
        """The agent's ``/agent``: its Drive's working copy."""
        return self.agent_home(agent_id) / "agent"

    def sessions(self, agent_id: str) -> Path:
        return self.agent_home(agent_id) / "sessions"

    def session_files(self, agent_id: str, session_id: str) -> Path:
        """A session's own ``/session`` scratch space."""
        return self.sessions(agent_id) / validate_id_text(session_id)

    def run_dir(self, agent_id: str) -> Path:
        """Sockets, pid files and state of the running computer."""
        return self.agent_home(agent_id) / "run"

    def space_files(self, space_id: str) -> Path:
        """The space's ``/space``: its Drive's working copy, shared by its agents."""
        return self.base / "spaces" / validate_id_text(space_id)
