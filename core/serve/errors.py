"""The API's errors: each carries the HTTP status and OpenAI's error type and code, so a client written for
OpenAI reads it as it reads OpenAI's own (`{"error": {"message", "type", "param", "code"}}`)."""

from core.errors import LoraForgeError


class ApiError(LoraForgeError):
    """A request the server refuses, with the status and the OpenAI error fields to answer with."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def as_api_error(error: LoraForgeError) -> ApiError:
    """Any engine refusal (an adapter that cannot load, a bad setting) as a 400 naming the problem."""
    return error if isinstance(error, ApiError) else ApiError(str(error))
