"""Test doubles shipped with openbuda, for its own tests and for applications that embed it.

- ``ScriptedModel``, ``FunctionModel`` and the helpers ``reply``, ``call``, ``calls``,
  ``tool_call``, ``delayed``: model clients that answer from a script or a function.
- ``register_test_model`` / ``registered_model``: make ``test:<name>`` resolve to a client
  (process-local).
- ``FakeClock``: a clock tests move by hand.
- ``openbuda.testing.openai_server``: a scripted OpenAI-compatible HTTP server (imported on
  its own: ``from openbuda.testing.openai_server import OpenAIServer``).
"""

from openbuda.testing._clock import FakeClock
from openbuda.testing._models import (
    FunctionModel,
    ReplyFunction,
    ScriptedModel,
    Step,
    StepLike,
    call,
    calls,
    delayed,
    reply,
    tool_call,
)
from openbuda.testing._registry import (
    register_test_model,
    registered_model,
    registered_test_model,
    unregister_test_model,
)

__all__ = [
    "FakeClock",
    "FunctionModel",
    "ReplyFunction",
    "ScriptedModel",
    "Step",
    "StepLike",
    "call",
    "calls",
    "delayed",
    "register_test_model",
    "registered_model",
    "registered_test_model",
    "reply",
    "tool_call",
    "unregister_test_model",
]
