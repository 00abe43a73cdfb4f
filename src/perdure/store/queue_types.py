"""Records the queue and schedule methods of the `Store` protocol take and return (see base.py, `# -- queues --`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import WorkflowRecord


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    """What `queue_enqueue` did."""

    inserted: bool
    existing: WorkflowRecord | None = None
    """Not inserted because a workflow with the same id exists: that row."""
    duplicate_of: str | None = None
    """Not inserted because another workflow of the queue holds the dedup key: its id."""


@dataclass(frozen=True, slots=True)
class DequeueRequest:
    """Take up to `limit` ready workflows of a queue, within the queue's budget, and make them ours (PENDING).

    The budget is enforced by the database, so it holds across processes: `concurrency` bounds the
    workflows of the queue that are PENDING anywhere; `rate_limit` bounds the dequeues in any rolling
    window of `rate_period_ms`. On a `partitioned` queue both apply per partition key, and partitions
    are served round-robin (least recently served first).
    """

    queue_name: str
    executor_id: str
    limit: int
    """What this process can take now (its `worker_concurrency` left, or a batch size)."""
    app_version: str | None = None
    """Only workflows enqueued by this version, or by none (None here: any)."""
    names: tuple[str, ...] | None = None
    """Only workflows of these names (None: any; an unknown one is failed by the caller)."""
    concurrency: int | None = None
    rate_limit: int | None = None
    rate_period_ms: int | None = None
    partitioned: bool = False
    wake_others: bool = False
    """Budget left that `limit` did not let us take: wake other processes' workers (PostgreSQL)."""

    @property
    def budgeted(self) -> bool:
        return self.concurrency is not None or self.rate_limit is not None or self.partitioned


@dataclass(frozen=True, slots=True)
class DequeueResult:
    records: list[WorkflowRecord]
    """Now PENDING and owned by the requester, in queue order."""
    backlog: bool
    """Ready workflows remain on the queue after this dequeue."""
    next_due: int | None
    """When the earliest DELAYED workflow of the queue becomes ready (ms, on `now`'s clock)."""
    rate_free_at: int | None
    """Rate-limited queue: when the oldest dequeue in the window leaves it (ms, on `now`'s clock)."""
    now: int
    """The clock the dequeue used (the database's on PostgreSQL)."""


@dataclass(frozen=True, slots=True)
class QueuePeek:
    """A read-only look at a queue (no lock, no write): whether a dequeue would be worth its transaction."""

    backlog: bool
    """Ready workflows wait (ENQUEUED, or DELAYED and due)."""
    ready: bool
    """... and the queue's budget (concurrency, rate limit) has room; per-partition budgets are not checked."""
    due_in: int | None = None
    """Milliseconds until the next DELAYED workflow is due."""
    rate_free_in: int | None = None
    """Rate-limited: milliseconds until the oldest dequeue of the window leaves it."""


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """A queue as declared by the last runtime that launched with it (settings as JSON)."""

    name: str
    config: str
    updated_at: int


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    name: str
    workflow_name: str
    cron: str
    timezone: str
    missed: str
    queue_name: str | None = None
    paused: bool = False
    last_tick: int | None = None
    """The latest tick fired (ms)."""
    created_at: int = 0
    updated_at: int = 0
