"""Errors as OpenAI's API sends them: ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status set, so the official client raises the matching exception (and retries only what may
succeed later: 429 and 503 carry ``Retry-After``)."""

from __future__ import annotations

from polymodal.errors import (
    ConfigError,
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    PolymodalError,
    SequenceTooLongError,
    TokenizerNotAvailableError,
    UnsupportedMediaError,
)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
    413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error",
    500: "server_error",
}  # fmt: skip


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}  # fmt: skip

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def from_polymodal(exc: PolymodalError, param: str | None = None) -> APIError:
    """The status a user error of the library deserves: media that cannot be used is 422 (413 when
    over a limit), everything else the request asked for wrongly is 400."""
    from polymodal.generation import DirectionNotSupportedError

    message = str(exc)
    if isinstance(exc, MediaTooLargeError):
        return APIError(413, message, param=param, code="media_too_large")
    if isinstance(exc, UnsupportedMediaError | CorruptMediaError | EmptyMediaError | MediaError):
        return APIError(422, message, param=param, code="invalid_media")
    if isinstance(exc, SequenceTooLongError):
        return APIError(400, message, param=param, code="context_length_exceeded")
    if isinstance(exc, DirectionNotSupportedError):
        return APIError(400, message, param=param, code="unsupported_direction")
    if isinstance(exc, TokenizerNotAvailableError):
        return APIError(400, message, param=param, code="modality_unavailable")
    if isinstance(exc, ConfigError):
        return APIError(400, message, param=param, code="invalid_value")
    return APIError(400, message, param=param, code="invalid_request")
