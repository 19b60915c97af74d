"""Pure: whether a failed attempt is tried again, and when (exponential backoff)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jobyard.model import JobSpec, TerminationReason
from jobyard.store.scheduling import Retry

# A failed attempt is retried (when max_retries allows) unless a person or a deadline ended it.
NOT_RETRIED = (
    TerminationReason.STOPPED_BY_USER,
    TerminationReason.MAX_RUNTIME_EXCEEDED,
    TerminationReason.IDLE_GPU,  # it would sit idle again
)


@dataclass(frozen=True)
class RetryPolicy:
    """`retry_backoff_seconds` doubled per attempt, at most `retry_backoff_max_seconds`."""

    backoff: float
    backoff_max: float

    def retryable(self, attempt: int, spec: JobSpec, why: TerminationReason | None) -> bool:
        return why not in NOT_RETRIED and attempt < spec.max_retries

    def retry(
        self,
        job_id: int,
        attempt: int,
        spec: JobSpec,
        *,
        why: TerminationReason | None,
        message: str,
        now: float,
        exit_code: int | None = None,
        started_at: datetime | None = None,
    ) -> Retry:
        """The failed attempt `attempt`, to start again once its backoff has passed."""
        delay = min(self.backoff * 2**attempt, self.backoff_max)
        return Retry(
            job_id=job_id,
            attempt=attempt,
            exit_code=exit_code,
            termination=why or TerminationReason.EXIT_NONZERO,
            message=message,
            started_at=started_at.timestamp() if started_at else None,
            not_before=now + delay,
            retries_left=spec.max_retries - attempt - 1,
        )
