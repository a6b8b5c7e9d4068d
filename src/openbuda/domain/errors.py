"""The one exception tree of openbuda.

::

    OpenbudaError                   code              retryable
    ├── InvalidRequest              invalid_request
    │   └── InvalidPath             invalid_path
    ├── Unauthorized                unauthorized
    ├── Forbidden                   forbidden
    ├── NotFound                    not_found
    ├── Conflict                    conflict
    │   ├── SessionBusy             session_busy
    │   ├── QuestionPending         question_pending
    │   └── InvalidTransition       invalid_transition
    ├── TooLarge                    too_large
    ├── ValidationFailed            validation_error
    ├── RateLimited                 rate_limited      yes
    ├── Unavailable                 unavailable       yes
    ├── LeaseLost                   lease_lost        (internal: a fenced write lost its lease)
    └── ModelError                  model_error       yes by default
        ├── NoModel                 no_model
        └── BadModelReply           bad_model_reply   yes

Every error has a stable ``code``, a human ``message`` that quotes identifiers with ``!r``,
``details`` (plain JSON) and ``retryable``. ``HTTP_STATUS`` is the one table from codes to HTTP
status codes; the SDK maps codes back to these classes with ``error_for_code``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

__all__ = [
    "HTTP_STATUS",
    "BadModelReply",
    "Conflict",
    "Forbidden",
    "InvalidPath",
    "InvalidRequest",
    "InvalidTransition",
    "LeaseLost",
    "ModelError",
    "NoModel",
    "NotFound",
    "OpenbudaError",
    "QuestionPending",
    "QuotaExceeded",
    "RateLimited",
    "SessionBusy",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "error_for_code",
]


class OpenbudaError(Exception):
    """Base of every error openbuda raises on purpose."""

    code: ClassVar[str] = "internal"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.retryable = self.default_retryable if retryable is None else retryable

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidRequest(OpenbudaError):
    code = "invalid_request"


class InvalidPath(InvalidRequest):
    code = "invalid_path"


class Unauthorized(OpenbudaError):
    code = "unauthorized"


class Forbidden(OpenbudaError):
    code = "forbidden"


class NotFound(OpenbudaError):
    code = "not_found"

    @classmethod
    def of(cls, kind: str, object_id: str) -> NotFound:
        return cls(f"{kind} {object_id!r} not found", details={"id": object_id})


class Conflict(OpenbudaError):
    code = "conflict"


class SessionBusy(Conflict):
    code = "session_busy"


class QuestionPending(Conflict):
    code = "question_pending"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class TooLarge(OpenbudaError):
    code = "too_large"


class QuotaExceeded(TooLarge):
    """A Drive write would take the space past its quota (413)."""

    code = "quota_exceeded"


class ValidationFailed(OpenbudaError):
    code = "validation_error"


class RateLimited(OpenbudaError):
    code = "rate_limited"
    default_retryable = True


class Unavailable(OpenbudaError):
    code = "unavailable"
    default_retryable = True


class LeaseLost(OpenbudaError):
    """A write fenced by a task lease found the lease gone: another worker owns the task now."""

    code = "lease_lost"


class ModelError(OpenbudaError):
    """The model provider failed (network, 5xx, rate limit); retried with backoff."""

    code = "model_error"
    default_retryable = True


class NoModel(ModelError):
    code = "no_model"
    default_retryable = False


class BadModelReply(ModelError):
    """The model answered with something unusable (malformed tool arguments, unknown tool)."""

    code = "bad_model_reply"
    default_retryable = True


HTTP_STATUS: Final[dict[str, int]] = {
    "invalid_request": 400,
    "invalid_path": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "session_busy": 409,
    "question_pending": 409,
    "invalid_transition": 409,
    "too_large": 413,
    "quota_exceeded": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "rate_limited": 429,
    "unavailable": 503,
}

_BY_CODE: Final[dict[str, type[OpenbudaError]]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        InvalidPath,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        SessionBusy,
        QuestionPending,
        InvalidTransition,
        TooLarge,
        QuotaExceeded,
        ValidationFailed,
        RateLimited,
        Unavailable,
        LeaseLost,
        ModelError,
        NoModel,
        BadModelReply,
    )
}


def error_for_code(code: str) -> type[OpenbudaError]:
    """The exception class for an error ``code`` (``OpenbudaError`` for unknown codes)."""
    return _BY_CODE.get(code, OpenbudaError)
