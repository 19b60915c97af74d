"""Everything the SDK raises is a ClientError; nothing else escapes it on purpose.

ClientError              catch this to handle any failure of a call
  ApiError               the server answered non-2xx: code, message, field (may be None), status
  ServerUnreachable      no answer: refused, DNS, timeout, connection lost. Also a ConnectionError
  WaitTimeout            wait() gave up before the job finished; `.job` is the last state seen.
                         Also a TimeoutError
"""

from __future__ import annotations

from jobyard.client.models import Job


class ClientError(Exception):
    """Base of every error the SDK raises."""


class ApiError(ClientError):
    """The server refused a request; `code` is machine-readable, `field` names the bad input."""

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status

    def __repr__(self) -> str:
        return (
            f"ApiError(code={self.code!r}, message={self.message!r}, "
            f"field={self.field!r}, status={self.status})"
        )


class ServerUnreachable(ClientError, ConnectionError):
    """No HTTP answer from the server at `url` (the request may or may not have been applied)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot reach the jobyard server at {url} ({detail})")
        self.url = url


class WaitTimeout(ClientError, TimeoutError):
    """The job was still not finished when wait()'s timeout ran out."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(
            f"job {job.display_id} did not finish within {timeout:g} s (state {job.state})"
        )
        self.job = job
