"""The one exception tree of jobyard. Services raise these; each face maps them to HTTP once.

JobyardError            code="error"
  InvalidInput          code="invalid"      bad input, names the field       -> 400/422
  NotFound              code="not_found"    also for other users' jobs       -> 404
  Conflict              code="conflict"     duplicate submission, illegal transition -> 409
  Unauthorized          code="unauthorized" missing or unknown token         -> 401
  Forbidden             code="forbidden"                                     -> 403
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


class ExecutorRefused(JobyardError):
    code = "unsupported"


class ExecutorUnavailable(JobyardError):
    code = "unavailable"
