"""API keys: the first key of an instance, and turning a secret into a principal.

Secrets are ``ob_`` + 43 URL-safe characters; only their sha256 is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from openbuda.domain.errors import Unauthorized, ValidationFailed
from openbuda.domain.principal import Principal
from openbuda.domain.records import Role
from openbuda.ports import NewApiKey, Store

__all__ = ["Bootstrapped", "authenticate", "bootstrap", "hash_secret", "new_secret"]

_BOOTSTRAP_KEY = re.compile(r"^[A-Za-z0-9_\-]{20,200}$")


def new_secret() -> str:
    return "ob_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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
    if secret is not None and not _BOOTSTRAP_KEY.match(secret):
        raise ValidationFailed(
            "the bootstrap API key must be 20-200 URL-safe characters (A-Z a-z 0-9 _ -)"
        )
    secret = secret or new_secret()
    async with store.write() as tx:
        await tx.lock_keys()
        if await tx.any_api_key():
            return None
        space = await tx.create_space(space_name, now)
        member = await tx.create_member(space.id, "owner", Role.OWNER, now)
        key = await tx.create_api_key(
            NewApiKey(
                space.id, member.id, "bootstrap", Role.OWNER, hash_secret(secret), secret[:7], None
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
        is_instance_owner=key.name == "bootstrap" and key.role is Role.OWNER,
    )
