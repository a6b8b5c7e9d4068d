"""API keys: the first key of an instance, turning a secret into a principal, and managing
keys and spaces (``KeyService``).

Secrets are ``ob_`` + 43 URL-safe characters; only their sha256 is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from openbuda.domain.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from openbuda.domain.principal import Principal
from openbuda.domain.records import ApiKey, Member, Role, Space
from openbuda.domain.validation import check_text
from openbuda.ports import Clock, NewApiKey, Store

__all__ = [
    "BOOTSTRAP_KEY_NAME",
    "Bootstrapped",
    "CreatedKey",
    "CreatedSpace",
    "Identity",
    "KeyService",
    "authenticate",
    "bootstrap",
    "check_bootstrap_key",
    "hash_secret",
    "new_secret",
]

_BOOTSTRAP_KEY = re.compile(r"^[A-Za-z0-9_\-]{20,200}$")
BOOTSTRAP_KEY_NAME = "bootstrap"
"""The name of the instance owner's keys (``authenticate`` reads instance ownership from it):
reserved, only the instance owner may give it to a new key."""


def new_secret() -> str:
    return "ob_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_bootstrap_key(secret: str) -> str:
    """``secret`` if it may be the first key (``OPENBUDA_BOOTSTRAP_API_KEY``), else 422."""
    if not _BOOTSTRAP_KEY.match(secret):
        raise ValidationFailed(
            "the bootstrap API key must be 20-200 URL-safe characters (A-Z a-z 0-9 _ -)",
            details={"field": "OPENBUDA_BOOTSTRAP_API_KEY"},
        )
    return secret


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    principal: Principal
    secret: str


async def bootstrap(
    store: Store, now: datetime, *, secret: str | None = None, space_name: str = "default"
) -> Bootstrapped | None:
    """Create the first space, its owner and the instance owner's key, while no key exists.

    ``None`` when a key exists already (then ``secret`` is ignored). One transaction: processes
    that start at once on an empty store create one space and one key between them.
    """
    if secret is not None:
        check_bootstrap_key(secret)
    secret = secret or new_secret()
    async with store.write() as tx:
        await tx.lock_keys()
        if await tx.any_api_key():
            return None
        space = await tx.create_space(space_name, now)
        member = await tx.create_member(space.id, "owner", Role.OWNER, now)
        key = await tx.create_api_key(
            NewApiKey(
                space.id,
                member.id,
                BOOTSTRAP_KEY_NAME,
                Role.OWNER,
                hash_secret(secret),
                secret[:7],
                None,
            ),
            now,
        )
    principal = Principal(space.id, member.id, Role.OWNER, key.id, is_instance_owner=True)
    return Bootstrapped(principal, secret)


async def authenticate(store: Store, secret: str, now: datetime) -> Principal:
    """The principal of an API key secret; ``Unauthorized`` for unknown or expired keys."""
    async with store.read() as tx:
        found = await tx.find_api_key(hash_secret(secret))
    if found is None:
        raise Unauthorized("unknown API key")
    key, member = found
    if key.revoked_at is not None:
        raise Unauthorized("this API key was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized(f"this API key expired at {key.expires_at.isoformat()}")
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        async with store.write() as tx:
            await tx.touch_api_key(key.id, now)
    return Principal(
        key.space_id,
        member.id,
        key.role,
        key.id,
        is_instance_owner=key.name == BOOTSTRAP_KEY_NAME and key.role is Role.OWNER,
    )


# ---------------------------------------------------------------------------------------------
# Managing keys and spaces

MAX_KEY_DAYS = 3650
_NAME_LIMIT = "agent_name"  # 100 characters, like an agent's name


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    secret: str
    """Shown once: only its hash is stored."""


@dataclass(frozen=True, slots=True)
class CreatedSpace:
    space: Space
    key: CreatedKey


@dataclass(frozen=True, slots=True)
class Identity:
    """What ``GET /v1/me`` shows: the principal with its key, member and space."""

    principal: Principal
    key: ApiKey
    member: Member
    space: Space


class KeyService:
    """API keys of a space and the spaces of an instance (API.md, Health and identity).

    Listing, creating and revoking keys needs ``admin``; no key creates or revokes a key above
    its own role, and any key may revoke itself. Only the instance owner creates spaces.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def identify(self, secret: str) -> Identity:
        """The principal of ``secret`` with its key, member and space (``Unauthorized``)."""
        now = self._clock.now()
        principal = await authenticate(self._store, secret, now)
        async with self._store.read() as tx:
            found = await tx.find_api_key(hash_secret(secret))
            space = await tx.get_space(principal.space_id)
        if found is None or space is None:
            raise Unauthorized("unknown API key")
        key, member = found
        return Identity(principal, key, member, space)

    async def list_keys(self, principal: Principal) -> list[ApiKey]:
        """The space's keys that are not revoked, oldest first."""
        principal.require(Role.ADMIN, "listing API keys")
        async with self._store.read() as tx:
            keys = await tx.list_api_keys(principal.space_id)
        return [key for key in keys if key.revoked_at is None]

    async def create_key(
        self,
        principal: Principal,
        *,
        name: str,
        role: Role | None = None,
        expires_in_days: int | None = None,
    ) -> CreatedKey:
        """A new key of ``principal``'s member; ``role`` defaults to ``member``."""
        principal.require(Role.ADMIN, "creating API keys")
        check_text(name, "name", _NAME_LIMIT, allow_empty=False)
        role = role or Role.MEMBER
        if not principal.role.includes(role):
            raise Forbidden(
                f"a key with the {principal.role.value!r} role cannot create a key with the "
                f"{role.value!r} role",
                details={"role": principal.role.value, "requested": role.value},
            )
        if name == BOOTSTRAP_KEY_NAME and not principal.is_instance_owner:
            raise Forbidden(
                f"the key name {BOOTSTRAP_KEY_NAME!r} is reserved for the instance owner",
                details={"field": "name"},
            )
        now = self._clock.now()
        expires_at = None
        if expires_in_days is not None:
            if not 1 <= expires_in_days <= MAX_KEY_DAYS:
                raise ValidationFailed(
                    f"expires_in_days must be between 1 and {MAX_KEY_DAYS}, got {expires_in_days}",
                    details={"field": "expires_in_days", "maximum": MAX_KEY_DAYS},
                )
            expires_at = now + timedelta(days=expires_in_days)
        secret = new_secret()
        request = NewApiKey(
            principal.space_id,
            principal.member_id,
            name,
            role,
            hash_secret(secret),
            secret[:7],
            expires_at,
        )
        async with self._store.write() as tx:
            key = await tx.create_api_key(request, now)
        return CreatedKey(key, secret)

    async def revoke_key(self, principal: Principal, key_id: str) -> None:
        """Revoke a key of the space. A space's last usable owner key stays (``Conflict``)."""
        now = self._clock.now()
        async with self._store.write() as tx:
            await tx.lock_keys()
            keys = [k for k in await tx.list_api_keys(principal.space_id) if k.revoked_at is None]
            target = next((k for k in keys if k.id == key_id), None)
            if target is None:
                raise NotFound.of("API key", key_id)
            if target.id != principal.key_id:
                principal.require(Role.ADMIN, "revoking API keys")
                if not principal.role.includes(target.role):
                    raise Forbidden(
                        f"a key with the {principal.role.value!r} role cannot revoke a key with "
                        f"the {target.role.value!r} role",
                        details={"role": principal.role.value, "target_role": target.role.value},
                    )
            owners = [
                k
                for k in keys
                if k.role is Role.OWNER and (k.expires_at is None or k.expires_at > now)
            ]
            if target.role is Role.OWNER and [k.id for k in owners] == [target.id]:
                raise Conflict(
                    f"API key {key_id!r} is the last owner key of its space; create another "
                    "owner key first",
                    details={"id": key_id},
                )
            await tx.revoke_api_key(principal.space_id, key_id, now)

    async def list_spaces(self, principal: Principal) -> list[Space]:
        """The principal's own space (every key is scoped to its space)."""
        async with self._store.read() as tx:
            space = await tx.get_space(principal.space_id)
        return [] if space is None else [space]

    async def create_space(self, principal: Principal, *, name: str) -> CreatedSpace:
        """A new space with an owner member and that owner's first key (instance owner only)."""
        if not principal.is_instance_owner:
            raise Forbidden(
                "only the instance owner (the key printed by the first `openbuda serve`) "
                "creates spaces",
                details={"required": "instance_owner"},
            )
        check_text(name, "name", _NAME_LIMIT, allow_empty=False)
        now = self._clock.now()
        secret = new_secret()
        async with self._store.write() as tx:
            space = await tx.create_space(name, now)
            member = await tx.create_member(space.id, "owner", Role.OWNER, now)
            key = await tx.create_api_key(
                NewApiKey(
                    space.id, member.id, "owner", Role.OWNER, hash_secret(secret), secret[:7], None
                ),
                now,
            )
        return CreatedSpace(space, CreatedKey(key, secret))
