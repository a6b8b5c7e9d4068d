"""Model adapters: ``resolve_model`` turns ``provider:model`` into a ``ModelClient``.

Providers: ``openai:`` (Chat Completions; any OpenAI-compatible server through
``OPENAI_BASE_URL``), ``openai-responses:``, ``anthropic:``, ``google:`` (all through
pydantic-ai's model layer, see ``PydanticAIModelClient``), ``local:smollm2`` (the bundled
offline model, ``openbuda.models.local``) and ``test:<name>`` (``openbuda.testing``).

This package imports no provider SDK: they load on a model's first call (the adapter classes
below are imported on first use too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openbuda.models._resolve import (
    PROVIDERS,
    LazyModelClient,
    UnavailableModel,
    aclose_models,
    check_model_spec,
    local_model_available,
    openai_provider,
    resolve_model,
)

if TYPE_CHECKING:
    from openbuda.models._openai_compatible import OpenAICompatibleChatModel
    from openbuda.models._pydantic_ai_client import PydanticAIModelClient
    from openbuda.models.local import LocalModelClient

__all__ = [
    "PROVIDERS",
    "LazyModelClient",
    "LocalModelClient",
    "OpenAICompatibleChatModel",
    "PydanticAIModelClient",
    "UnavailableModel",
    "aclose_models",
    "check_model_spec",
    "local_model_available",
    "openai_provider",
    "resolve_model",
]

_LAZY = {
    "OpenAICompatibleChatModel": "openbuda.models._openai_compatible",
    "PydanticAIModelClient": "openbuda.models._pydantic_ai_client",
    "LocalModelClient": "openbuda.models.local",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
