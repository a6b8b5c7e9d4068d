"""Who is asking: every service call is made on behalf of a principal, scoped to its space."""

from __future__ import annotations

from dataclasses import dataclass

from openbuda.domain.errors import Forbidden
from openbuda.domain.records import Role

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    space_id: str
    member_id: str
    role: Role
    key_id: str | None = None
    is_instance_owner: bool = False

    def require(self, role: Role, action: str) -> None:
        """Raise ``Forbidden`` unless this principal's role includes ``role``."""
        if not self.role.includes(role):
            raise Forbidden(
                f"{action} needs the {role.value!r} role; this key has {self.role.value!r}",
                details={"required": role.value, "role": self.role.value},
            )

    @property
    def actor(self) -> str:
        return self.member_id
