"""``PydanticAIModelClient``: any pydantic-ai ``Model`` as an openbuda ``ModelClient``.

Only pydantic-ai's model layer is used (its ``Model`` classes, providers and the direct
``model_request_stream``), never its agent loop: our loop is the event-sourced one in
``openbuda.engine``. One ``respond`` is one streamed request:

- ``ModelInput`` turns become pydantic-ai messages: ``SystemText`` a ``SystemPromptPart``,
  ``UserTurn`` a ``UserPromptPart``, ``AssistantTurn`` a ``ModelResponse`` of a ``TextPart``
  and ``ToolCallPart``\\ s, ``ToolResultTurn`` a ``ToolReturnPart`` (``outcome='failed'`` when
  ``is_error``). Consecutive request parts share one ``ModelRequest``.
- Tools become ``ToolDefinition``\\ s; text output is always allowed.
- Text deltas go to ``on_text`` as they arrive; the reply's text is their concatenation.
- Provider errors become ``ModelError`` (``retryable`` for timeouts, connection failures, 408,
  409, 425, 429 and 5xx; not for other 4xx such as a bad key or an unknown model), unusable
  replies ``BadModelReply``. The SDK's own retries are off: the engine retries with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Self

from pydantic_ai.direct import model_request_stream
from pydantic_ai.exceptions import (
    ContentFilterError,
    ModelAPIError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRequestRejectedError,
    ModelRequestTimeout,
    UnexpectedModelBehavior,
    UserError,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    PartDeltaEvent,
    PartStartEvent,
    SystemPromptPart,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition

from openbuda.domain.conversation import (
    AssistantTurn,
    ModelInput,
    ModelReply,
    SystemText,
    ToolResultTurn,
    ToolSpec,
    Usage,
    UserTurn,
)
from openbuda.domain.errors import BadModelReply, ModelError, NoModel
from openbuda.models._openai_compatible import LEGACY_FUNCTION_CALL
from openbuda.models._tool_calls import RawToolCall, normalize_tool_calls
from openbuda.ports import TextDeltaSink

__all__ = ["PydanticAIModelClient", "to_messages", "to_request_parameters"]

logger = logging.getLogger(__name__)

_GENERATED_ID_PREFIX = "pyd_ai_"
"""pydantic-ai's prefix for the ids it makes up when a provider sent none."""
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


class PydanticAIModelClient:
    """A ``ModelClient`` backed by a pydantic-ai ``Model``.

    ``settings`` are pydantic-ai ``ModelSettings`` sent with every request (``timeout``,
    ``request_timeout``, ``max_retries``, ``temperature``…). Close it with ``aclose()`` (or use
    it as an async context manager) to release the provider's HTTP connections.
    """

    def __init__(self, model: Model, name: str, *, settings: ModelSettings | None = None) -> None:
        self.model = model
        self.name = name
        self.settings: ModelSettings = settings or ModelSettings()

    def __repr__(self) -> str:
        return f"PydanticAIModelClient({self.name!r})"

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        messages = to_messages(request)
        parameters = to_request_parameters(request.tools)
        settings = ModelSettings(**self.settings)
        if request.max_output_tokens is not None:
            settings["max_tokens"] = request.max_output_tokens
        # Gives the provider a fresh HTTP client when the event loop changed (as an agent run does).
        self.model._refresh_http_client()
        try:
            async with model_request_stream(
                self.model,
                messages,
                model_settings=settings,
                model_request_parameters=parameters,
                instrument=False,
            ) as stream:
                async for event in stream:
                    delta = _text_delta(event)
                    if delta and on_text is not None:
                        try:
                            await on_text(delta)
                        except Exception as error:
                            raise _SinkFailed(error) from error
                response = stream.get()
        except _SinkFailed as failed:
            raise failed.error from None
        except Exception as error:
            raise self._map_error(error) from error
        return self._reply(request, response)

    async def aclose(self) -> None:
        """Close the HTTP client the provider opened, if any."""
        provider = self.model.provider
        http_client = provider._own_http_client if provider is not None else None
        if http_client is not None and not http_client.is_closed:
            await http_client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- replies ---------------------------------------------------------------------------

    def _reply(self, request: ModelInput, response: ModelResponse) -> ModelReply:
        texts: list[str] = []
        raw_calls: list[RawToolCall] = []
        legacy_calls: list[RawToolCall] = []
        for part in response.parts:
            if isinstance(part, TextPart):
                texts.append(part.content)
            elif isinstance(part, ToolCallPart):
                call_id: str | None = part.tool_call_id
                if call_id and call_id.startswith(_GENERATED_ID_PREFIX):
                    call_id = None
                raw = RawToolCall(call_id, part.tool_name, part.args)
                if (part.provider_details or {}).get(LEGACY_FUNCTION_CALL):
                    legacy_calls.append(raw)
                else:
                    raw_calls.append(raw)
        # The legacy `function_call` counts only when the reply has no `tool_calls`.
        raw_calls = raw_calls or legacy_calls
        tool_calls = normalize_tool_calls(request, raw_calls, model_name=self.name)
        usage = Usage(
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
        )
        return ModelReply(
            text="".join(texts),
            tool_calls=tool_calls,
            usage=usage,
            model_name=response.model_name or self.name,
        )

    # -- errors ----------------------------------------------------------------------------

    def _map_error(self, error: Exception) -> ModelError:
        name = self.name
        if isinstance(error, ModelError):
            return error
        if isinstance(error, ModelRequestTimeout):
            return ModelError(
                f"model {name!r} did not answer within {error.timeout:g} s",
                details={"model": name, "timeout_seconds": error.timeout},
                retryable=True,
            )
        if isinstance(error, ModelHTTPError):
            return _http_error(name, error)
        if isinstance(error, ModelAPIError):
            # Connection failures, timeouts of one attempt, undecodable bodies, errors in a stream.
            retryable = not isinstance(error, ModelRequestRejectedError | ModelQuotaExceededError)
            return ModelError(
                f"model {name!r} failed: {error.message}",
                details={"model": name, "kind": type(error).__name__},
                retryable=retryable,
            )
        if isinstance(error, ContentFilterError):
            return BadModelReply(
                f"model {name!r} refused to answer (content filter): {error.message}",
                details={"model": name},
                retryable=False,
            )
        if isinstance(error, UnexpectedModelBehavior):
            return BadModelReply(
                f"model {name!r} sent an unusable reply: {error.message}",
                details={"model": name},
            )
        if isinstance(error, UserError):
            return NoModel(
                f"model {name!r} cannot be used as configured: {error}",
                details={"model": name},
            )
        logger.warning("unexpected error from model %r", name, exc_info=error)
        return BadModelReply(
            f"model {name!r} sent a reply that could not be read: {type(error).__name__}: {error}",
            details={"model": name, "kind": type(error).__name__},
        )


class _SinkFailed(Exception):
    """``on_text`` raised: not the model's fault, so re-raised as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _text_delta(event: object) -> str:
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return event.part.content
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return event.delta.content_delta
    return ""


def _http_error(name: str, error: ModelHTTPError) -> ModelError:
    status = error.status_code
    retryable = status >= 500 or status in _RETRYABLE_STATUS
    if isinstance(error, ModelQuotaExceededError):
        retryable = False
    message = _provider_message(error.body) or error.message
    details: dict[str, Any] = {"model": name, "status_code": status}
    if error.provider_error_code:
        details["provider_code"] = error.provider_error_code
    if error.retry_after is not None:
        details["retry_after_seconds"] = error.retry_after
    return ModelError(
        f"model {name!r} failed with HTTP {status}: {message}", details=details, retryable=retryable
    )


def _provider_message(body: object) -> str | None:
    """The human message of a provider's error body (``{"error": {"message": …}}`` and kin)."""
    if isinstance(body, str):
        return body or None
    if not isinstance(body, dict):
        return None
    error: object = body.get("error", body)  # pyright: ignore[reportUnknownMemberType]
    if isinstance(error, dict) and isinstance(message := error.get("message"), str):  # pyright: ignore[reportUnknownMemberType]
        return message
    if isinstance(error, str):
        return error
    return None


# ---------------------------------------------------------------------------------------------
# ModelInput -> pydantic-ai


def to_messages(request: ModelInput) -> list[ModelMessage]:
    """The turns of ``request`` as pydantic-ai messages."""
    messages: list[ModelMessage] = []
    pending: list[ModelRequestPart] = []

    def flush() -> None:
        if pending:
            messages.append(ModelRequest(parts=list(pending)))
            pending.clear()

    for turn in request.turns:
        match turn:
            case SystemText(text=text):
                pending.append(SystemPromptPart(content=text))
            case UserTurn(text=text):
                pending.append(UserPromptPart(content=text))
            case ToolResultTurn():
                pending.append(
                    ToolReturnPart(
                        tool_name=turn.name,
                        content=turn.output,
                        tool_call_id=turn.call_id,
                        outcome="failed" if turn.is_error else "success",
                    )
                )
            case AssistantTurn():
                parts: list[ModelResponsePart] = []
                if turn.text:
                    parts.append(TextPart(content=turn.text))
                parts.extend(
                    ToolCallPart(
                        tool_name=call.name, args=dict(call.args), tool_call_id=call.call_id
                    )
                    for call in turn.tool_calls
                )
                if parts:
                    flush()
                    messages.append(ModelResponse(parts=parts))
    flush()
    return messages


def to_request_parameters(tools: Sequence[ToolSpec]) -> ModelRequestParameters:
    """The tools on offer; plain text output is always allowed."""
    return ModelRequestParameters(
        function_tools=[
            ToolDefinition(
                name=tool.name,
                description=tool.description or None,
                parameters_json_schema=dict(tool.parameters)
                or {"type": "object", "properties": {}},
            )
            for tool in tools
        ],
        allow_text_output=True,
    )
