"""Model adapters: ``resolve_model`` turns ``provider:model`` into a ``ModelClient``.

Providers: ``openai:`` (Chat Completions; any OpenAI-compatible server through
``OPENAI_BASE_URL``), ``openai-responses:``, ``anthropic:``, ``google:`` (all through
pydantic-ai's model layer, see ``PydanticAIModelClient``), ``local:smollm2`` (the bundled
offline model, ``openbuda.models.local``) and ``test:<name>`` (``openbuda.testing``).

This package imports no provider SDK: they load on a model's first call.
"""

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

__all__ = [
    "PROVIDERS",
    "LazyModelClient",
    "UnavailableModel",
    "aclose_models",
    "check_model_spec",
    "local_model_available",
    "openai_provider",
    "resolve_model",
]
