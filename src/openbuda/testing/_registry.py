"""Test models by name, so that ``resolve_model("test:<name>", settings)`` finds them.

The registry is a module-level dict: it is process-local (a subprocess, such as a server
started by an acceptance test, does not see what the test registered) and shared by every
test of the process, so tests unregister what they register (``registered_model`` does).
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from openbuda.ports import ModelClient

__all__ = [
    "register_test_model",
    "registered_model",
    "registered_test_model",
    "unregister_test_model",
]

_models: dict[str, ModelClient] = {}


def register_test_model(name: str, client: ModelClient) -> None:
    """Make ``test:<name>`` resolve to ``client`` in this process (replacing any earlier one)."""
    if not name or ":" in name:
        raise ValueError(f"a test model name is a plain word, got {name!r}")
    _models[name] = client


def unregister_test_model(name: str) -> None:
    """Forget ``test:<name>`` (no error when it is not registered)."""
    _models.pop(name, None)


def registered_test_model(name: str) -> ModelClient | None:
    """The client registered as ``test:<name>``, if any."""
    return _models.get(name)


@contextmanager
def registered_model(name: str, client: ModelClient) -> Generator[ModelClient]:
    """Register ``client`` as ``test:<name>`` for the ``with`` block."""
    register_test_model(name, client)
    try:
        yield client
    finally:
        if _models.get(name) is client:
            del _models[name]
