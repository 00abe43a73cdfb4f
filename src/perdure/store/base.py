"""The `Store` protocol: every database access of the engine goes through it.

Records are small frozen dataclasses; times are integer milliseconds since the epoch (UTC). Writes that
guard ownership (`step_record`, `workflow_finish`) only apply while the workflow is PENDING and owned by the
calling executor, so a cancelled workflow, or one another executor took over, can never be overwritten by
a stale runner. Implementations may batch concurrent writes into one transaction (group commit), but a
write's awaitable only returns after its transaction committed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .notify import Notifier


class WorkflowStatus(enum.StrEnum):
    """Where a workflow is in its life. See docs/concepts.md for the state machine."""

    PENDING = "PENDING"
    """Running, or waiting to be recovered after a crash."""
    ENQUEUED = "ENQUEUED"
    """Waiting on a queue for a worker to take it."""
    DELAYED = "DELAYED"
    """On a queue, not before its `delay` has passed."""
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    RETRIES_EXCEEDED = "RETRIES_EXCEEDED"
    """Recovered `max_recovery_attempts` times without finishing: a poison workflow, parked."""

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {WorkflowStatus.SUCCESS, WorkflowStatus.ERROR, WorkflowStatus.CANCELLED, WorkflowStatus.RETRIES_EXCEEDED}
)
TERMINAL_STATUSES: tuple[str, ...] = tuple(s.value for s in _TERMINAL)
RESUMABLE_STATUSES: tuple[str, ...] = ("CANCELLED", "ERROR", "RETRIES_EXCEEDED")
INTERNAL_QUEUE = "_perdure"
"""Queue used for work that any runtime with the code may pick up (resume/fork/start from a Client)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    workflow_id: str
    name: str
    status: str
    inputs: str | None
    created_at: int
    updated_at: int
    serializer: str = "json"
    executor_id: str | None = None
    app_version: str | None = None
    parent_id: str | None = None
    forked_from: str | None = None
    output: str | None = None
    error: str | None = None
    started_at: int | None = None
    completed_at: int | None = None
    recovery_attempts: int = 0
    timeout_ms: int | None = None
    deadline_at: int | None = None
    queue_name: str | None = None
    dedup_key: str | None = None
    priority: int = 0
    partition_key: str | None = None
    delay_until: int | None = None


@dataclass(frozen=True, slots=True)
class StepRecord:
    workflow_id: str
    step_id: int
    name: str
    args_hash: str | None = None
    output: str | None = None
    error: str | None = None
    child_id: str | None = None
    attempts: int = 1
    started_at: int | None = None
    completed_at: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutorRecord:
    executor_id: str
    host_key: str
    hostname: str
    pid: int
    pid_started: str | None
    app_version: str | None
    started_at: int
    heartbeat_at: int


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    inserted: bool
    record: WorkflowRecord
    """The row as it is now: ours if inserted, else the one that was already there."""


GuardOutcome = Literal["ok", "cancelled", "not_owner", "missing", "conflict", "finished"]
"""Why a guarded write did or did not apply."""


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    status: tuple[str, ...] = ()
    name: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    executor_id: str | None = None
    app_version: str | None = None
    parent_id: str | None = None
    queue_name: str | None = None
    workflow_ids: tuple[str, ...] = ()
    limit: int | None = 100
    offset: int = 0
    newest_first: bool = True


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Take over PENDING workflows of dead executors (or of this executor's previous life)."""

    executor_id: str
    from_executors: tuple[str, ...]
    names: tuple[str, ...]
    """Only workflows whose code this executor has."""
    app_version: str | None = None
    any_version: bool = True
    limit: int = 1000


@dataclass(slots=True)
class StoreStats:
    commits: int = 0
    batched_writes: int = 0
    busy_retries: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """The system database. One implementation per backend (SQLite, PostgreSQL); one conformance suite."""

    url: str
    stats: StoreStats
    notifier: Notifier
    """Wakes waiters in this process after writes commit."""
    notifies_other_processes: bool
    """Whether other processes' waiters are woken too (PostgreSQL NOTIFY); if not, they poll."""

    async def open(self) -> None:
        """Connect, create or migrate the schema; refuse a database newer than this code."""

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    # -- workflows -------------------------------------------------------------------------------------
    async def workflow_insert(self, record: WorkflowRecord) -> InsertOutcome:
        """Insert a new workflow row unless the id exists; either way return the row as it is."""

    async def workflow_get(self, workflow_id: str) -> WorkflowRecord | None: ...

    async def workflow_list(self, flt: WorkflowFilter) -> list[WorkflowRecord]: ...

    async def workflow_finish(
        self, workflow_id: str, executor_id: str, status: str, output: str | None, error: str | None
    ) -> GuardOutcome:
        """Write the outcome while the workflow is PENDING and owned by `executor_id`."""

    async def workflow_cancel(self, workflow_id: str, *, with_children: bool = True) -> list[str]:
        """Mark the workflow (and its descendants) CANCELLED unless already terminal; return changed ids."""

    async def workflow_resume(
        self, workflow_id: str, *, executor_id: str | None, queue_name: str | None
    ) -> WorkflowRecord:
        """Make a CANCELLED/ERROR/RETRIES_EXCEEDED workflow runnable again from its checkpoints.

        With `executor_id`, it becomes PENDING and owned by it; otherwise ENQUEUED on `queue_name`.
        """

    async def workflow_fork(
        self,
        source_id: str,
        new_id: str,
        from_step: int,
        *,
        executor_id: str | None,
        queue_name: str | None,
        app_version: str | None,
    ) -> WorkflowRecord:
        """Create `new_id` with the inputs of `source_id` and copies of its steps before `from_step`."""

    async def workflow_set_status(self, workflow_id: str, status: str, *, error: str | None = None) -> None: ...

    async def workflow_delete(self, workflow_ids: list[str]) -> int:
        """Delete terminal workflows (with their steps); PENDING/ENQUEUED ones are left alone."""

    async def workflow_gc(self, completed_before: int) -> int:
        """Delete terminal workflows completed before the cutoff; return how many."""

    async def workflow_claim(self, request: ClaimRequest) -> list[WorkflowRecord]:
        """Atomically make PENDING workflows of `from_executors` ours, counting a recovery attempt."""

    async def workflow_statuses(self, workflow_ids: list[str]) -> dict[str, str]: ...

    async def workflow_active_executors(self) -> list[str]:
        """Executor ids that own PENDING workflows."""

    # -- queues ----------------------------------------------------------------------------------------
    async def queue_claim(
        self, queue_name: str, executor_id: str, names: tuple[str, ...], limit: int, app_version: str | None
    ) -> list[WorkflowRecord]:
        """Move up to `limit` ENQUEUED workflows of `queue_name` whose name we know to PENDING, owned by us."""

    # -- steps -----------------------------------------------------------------------------------------
    async def step_record(self, record: StepRecord, executor_id: str) -> GuardOutcome:
        """Checkpoint a finished step while the workflow is PENDING and ours; never overwrites."""

    async def step_list(self, workflow_id: str) -> list[StepRecord]: ...

    # -- executors -------------------------------------------------------------------------------------
    async def executor_register(self, record: ExecutorRecord) -> None: ...

    async def executor_heartbeat(self, executor_id: str) -> bool:
        """Refresh the heartbeat; False when the row is gone (another executor declared us dead)."""

    async def executor_list(self) -> list[ExecutorRecord]: ...

    async def executor_remove(self, executor_id: str) -> None: ...
