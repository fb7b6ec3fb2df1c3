"""The one retry policy of the project's I/O-bound assets, and how deterministic failures
opt out of it.

``IO_RETRY`` goes on every asset whose step is dominated by I/O against the warehouse
(Delta on local disk or S3), MLflow or an external source: those fail transiently (S3
throttling or a dropped connection, the MLflow server restarting, a Delta commit losing a
race with a concurrent writer), and every write is atomic, so running the step again is
safe. The delays grow exponentially (Dagster: ``(2**attempt - 1) x delay``, so about 0.5,
1.5 and 3.5 s) so that a store that is briefly overloaded gets room to recover, and carry
+-``delay`` of jitter so that the many steps of a backfill that failed together do not
all retry in lockstep against the same store. A step still failing after ~6 s is not
transient.

A failure that is the same on every attempt (a blocking data-quality rule, a bad landing
file, a leak found by the look-ahead check, a missing upstream partition, a failed gate)
must not be retried: it is raised as ``refuse(...)`` (a ``dagster.Failure`` with
``allow_retries=False``), or through ``not_retried(...)`` for exceptions raised by library
code, which keeps the exception's message as the failure's description.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import Backoff, Failure, Jitter, RetryPolicy

__all__ = ["IO_RETRY", "not_retried", "refuse"]

IO_RETRY = RetryPolicy(
    max_retries=3,
    delay=0.5,
    backoff=Backoff.EXPONENTIAL,
    jitter=Jitter.PLUS_MINUS,
)


def refuse(description: str, metadata: Mapping[str, Any] | None = None) -> Failure:
    """A step failure that no retry policy retries (bad input, not a transient error)."""
    return Failure(description=description, metadata=dict(metadata or {}), allow_retries=False)


@contextmanager
def not_retried(*errors: type[BaseException]) -> Iterator[None]:
    """Re-raise ``errors`` raised in the block as ``refuse(str(error))`` (chained), so the
    step fails at once with the same message instead of going through the retries."""
    try:
        yield
    except errors as exc:
        raise refuse(str(exc)) from exc
