"""Fixtures of the conformance suites."""

from __future__ import annotations

import pytest

from openbuda.stores import SqlStore

from .store_world import World


@pytest.fixture
async def world(store: SqlStore) -> World:
    """A space with one owner and one agent in a migrated, empty store."""
    return await World.make(store)
