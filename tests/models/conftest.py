"""Fixtures for the model adapter tests: settings without real credentials, a scripted
OpenAI-compatible server and a client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pydantic_ai.settings import ModelSettings

from openbuda.models import aclose_models, openai_provider
from openbuda.models._openai_compatible import OpenAICompatibleChatModel
from openbuda.models._pydantic_ai_client import PydanticAIModelClient
from openbuda.settings import Settings
from openbuda.testing.openai_server import OpenAIServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings that ignore the environment's model configuration and credentials."""
    return Settings.model_validate({}).model_copy(
        update={
            "home": tmp_path,
            "model": None,
            "openai_base_url": None,
            "openai_api_key": None,
            "anthropic_api_key": None,
            "google_api_key": None,
            "block_real_models": False,
            "model_timeout_seconds": 10.0,
        }
    )


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key="test-key") as running:
        yield running


MakeClient = Callable[..., PydanticAIModelClient]


@pytest.fixture
async def make_client(server: OpenAIServer) -> AsyncIterator[MakeClient]:
    """Build clients of ``server`` (``timeout=``, ``api_key=``); closed after the test."""
    made: list[PydanticAIModelClient] = []

    def make(*, timeout: float = 5.0, api_key: str = "test-key") -> PydanticAIModelClient:
        model = OpenAICompatibleChatModel(
            "gpt-4o-mini", provider=openai_provider(server.base_url, api_key)
        )
        settings = ModelSettings(timeout=timeout, request_timeout=timeout, max_retries=0)
        made.append(PydanticAIModelClient(model, "openai:gpt-4o-mini", settings=settings))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def client(make_client: MakeClient) -> PydanticAIModelClient:
    return make_client()


@pytest.fixture
async def closed_models() -> AsyncIterator[None]:
    """Close the clients ``resolve_model`` cached during the test."""
    yield
    await aclose_models()
