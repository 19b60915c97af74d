"""The one exception tree of jobyard. Services raise these; each face maps them to HTTP once.

JobyardError            code="error"
  InvalidInput          code="invalid"      bad input, names the field       -> 400/422
  NotFound              code="not_found"    also for other users' jobs       -> 404
  Conflict              code="conflict"     duplicate submission, illegal transition -> 409
  Unauthorized          code="unauthorized" missing or unknown token         -> 401
  Forbidden             code="forbidden"                                     -> 403
  LimitExceeded         code="limit_exceeded" a configured limit (names it)    -> 429
  ExecutorRefused       code="unsupported"  a spec this executor cannot run  -> 400
  ExecutorUnavailable   code="unavailable"  engine unreachable               -> 503
"""

from __future__ import annotations


class JobyardError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(JobyardError):
    code = "invalid"


class NotFound(JobyardError):
    code = "not_found"


class Conflict(JobyardError):
    code = "conflict"


class Unauthorized(JobyardError):
    code = "unauthorized"


class Forbidden(JobyardError):
    code = "forbidden"


class LimitExceeded(JobyardError):
    """A configured limit (e.g. max_live_jobs_per_user) is reached; `field` names it."""

    code = "limit_exceeded"


class ExecutorRefused(JobyardError):
    code = "unsupported"


class ExecutorUnavailable(JobyardError):
    code = "unavailable"
