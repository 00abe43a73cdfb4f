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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .notify import Notifier
from .queue_types import DequeueRequest, DequeueResult, EnqueueOutcome, QueuePeek, QueueRecord, ScheduleRecord


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


# Not frozen: one is built per step on the hot path, and a frozen dataclass's __init__ costs ~5x more.
# Treat it as immutable all the same.
@dataclass(slots=True)
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
    commits_off_loop: bool
    """Whether a commit waits on the network rather than on this thread (PostgreSQL): then a checkpoint's
    round trip can overlap other work of the loop. A SQLite commit runs on the loop thread itself."""

    async def open(self) -> None:
        """Connect, create or migrate the schema; refuse a database newer than this code."""

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    # -- workflows -------------------------------------------------------------------------------------
    async def workflow_insert(self, record: WorkflowRecord, *, hold: float = 0.0) -> InsertOutcome:
        """Insert a new workflow row unless the id exists; either way return the row as it is.

        `hold`: seconds the insert may wait, uncommitted, for another write to share its commit (the
        workflow's first checkpoint, say); when that time is up it commits alone. Only for a fresh id
        that nobody else can know yet.
        """

    async def workflow_get(self, workflow_id: str) -> WorkflowRecord | None: ...

    async def workflow_list(self, flt: WorkflowFilter) -> list[WorkflowRecord]: ...

    async def workflow_finish(
        self,
        workflow_id: str,
        executor_id: str,
        status: str,
        output: str | None,
        error: str | None,
        *,
        steps: Sequence[StepRecord] = (),
    ) -> GuardOutcome:
        """Write the outcome while the workflow is PENDING and owned by `executor_id`.

        `steps`: checkpoints of the run not written yet, written first in the same transaction, each as
        `step_record` would, under the outcome's guard: a refused run gets none of them and no outcome.
        "conflict": a step's position held another operation already; the outcome is not written (as
        `step_record`'s "conflict" stops a run), the other steps are.
        """

    async def workflow_watch(self, workflow_id: str) -> None:
        """Ask that this workflow's finish wake waiters in other processes.

        Called by a waiter before it waits, then it checks again. A store that notifies other processes
        sends the finish's notification only for watched workflows, so runs nobody waits for elsewhere
        cost no NOTIFY; a store that never notifies other processes does nothing.
        """

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

    # -- messaging -------------------------------------------------------------------------------------
    # Messages, events and streams (store/sqlite_messaging.py, store/postgres_messaging.py). A write made
    # by a workflow names its position `step_id` and `sub` (0 for the workflow body, n >= 1 for the n-th
    # write inside the step at that position); writing the same (workflow, step_id, sub) again adds
    # nothing (an event takes the new value, a stream keeps the first), so retries never duplicate.
    # `checkpoint`, when given, is recorded in the same transaction (guarded like `step_record`).
    # Outcomes that are a `StepRecord` are the checkpoint as stored at its position (new, or recorded by
    # an earlier try of the same write). A checkpoint with no `completed_at` is a wait still under way
    # (`recv`, `get_event`): its output holds the deadline until it completes.
    async def message_send(self, destination_id: str, topic: str, value: str, message_id: str) -> bool:
        """Queue a message for `destination_id` unless `message_id` was sent already (then False).

        Raises `WorkflowNotFound` when the destination does not exist.
        """

    async def message_send_step(
        self,
        destination_id: str,
        topic: str,
        value: str,
        message_id: str,
        checkpoint: StepRecord,
        executor_id: str,
        missing_error: str,
    ) -> StepRecord | GuardOutcome:
        """A send from a workflow body: the message and `checkpoint` commit together.

        A missing destination records `missing_error` as the checkpoint's error instead (so a replay
        raises it again) and sends nothing.
        """

    async def message_receive(
        self,
        workflow_id: str,
        topic: str,
        executor_id: str,
        result: StepRecord,
        *,
        wait: StepRecord | None = None,
        final: bool = False,
    ) -> StepRecord | GuardOutcome | None:
        """Consume the oldest unconsumed message of `topic` into the checkpoint `result`, in one transaction.

        A checkpoint still waiting at that position (`completed_at` None) is completed; one already
        completed (a retried write) is returned and nothing more is consumed. With no message, `final`
        completes `result` as it is (a timeout); otherwise `wait` (a waiting checkpoint holding the
        deadline), when given, is recorded and returned, else None.
        """

    async def step_complete(self, record: StepRecord, executor_id: str) -> GuardOutcome:
        """Complete the waiting checkpoint at `record.step_id` with `record`'s output (guarded like
        `step_record`; "ok" also when it was completed already)."""

    async def message_available(self, workflow_id: str, topic: str) -> bool:
        """Whether an unconsumed message of `topic` waits for the workflow (a cheap read)."""

    async def event_set(
        self,
        workflow_id: str,
        key: str,
        value: str,
        *,
        step_id: int,
        sub: int,
        executor_id: str,
        checkpoint: StepRecord | None = None,
    ) -> GuardOutcome:
        """Record a new value of event `key` (history kept; the latest is the value)."""

    async def event_get(self, workflow_id: str, key: str) -> str | None:
        """The latest value of the event, or None when never set."""

    async def event_get_all(self, workflow_id: str) -> dict[str, str]:
        """The latest value of every event of the workflow."""

    async def stream_write(
        self,
        workflow_id: str,
        key: str,
        value: str | None,
        *,
        step_id: int,
        sub: int,
        executor_id: str,
        checkpoint: StepRecord | None = None,
    ) -> GuardOutcome | Literal["closed"]:
        """Append `value` at the stream's next offset; `value=None` closes the stream.

        "closed": the stream was closed before (nothing written; closing twice is "ok").
        """

    async def stream_read(self, workflow_id: str, key: str, offset: int, limit: int) -> list[tuple[int, str | None]]:
        """Up to `limit` (offset, value) pairs from `offset` on, in order; a None value is the close."""

    async def notify_keys(self, keys: list[str]) -> None:
        """Wake waiters on `keys` here and, where the store can, in other processes."""

    # -- queues ----------------------------------------------------------------------------------------
    # Queues with flow control, debouncing and cron schedules (store/sqlite_queues.py, store/postgres_queues.py;
    # records in store/queue_types.py). Budgets are enforced inside the database transaction that dequeues,
    # so they hold across processes and hosts.
    async def queue_enqueue(self, record: WorkflowRecord) -> EnqueueOutcome:
        """Insert an ENQUEUED/DELAYED workflow unless its id exists or its dedup key is held on its queue."""

    async def queue_debounce(
        self, record: WorkflowRecord, debounce_key: str, max_wait_ms: int | None
    ) -> tuple[str, bool]:
        """Insert a DELAYED workflow under `debounce_key`, or, while one waits under it, give that one
        `record`'s inputs and delay (capped at its creation + `max_wait_ms`). Returns (id, inserted)."""

    async def queue_dequeue(self, request: DequeueRequest) -> DequeueResult:
        """Make ready workflows of a queue PENDING and ours, within the queue's budget (see DequeueRequest)."""

    async def queue_peek(self, request: DequeueRequest) -> QueuePeek:
        """Read only: whether a dequeue could take something now, and when to look again."""

    async def queue_requeue(self, workflow_ids: list[str], executor_id: str) -> list[str]:
        """Put PENDING workflows we own back on their queues as ENQUEUED (recovery goes through the queue)."""

    async def queue_steps(self, workflow_ids: list[str]) -> dict[str, list[StepRecord]]:
        """The checkpoints of several workflows at once (dequeued runs that may have history)."""

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        """Workflows per status, per queue."""

    async def queue_register(self, queues: list[tuple[str, str]]) -> None:
        """Record (name, settings JSON) of the queues a runtime serves."""

    async def queue_registry(self) -> list[QueueRecord]: ...

    async def schedule_register(self, records: list[ScheduleRecord]) -> list[ScheduleRecord]:
        """Upsert schedule definitions (keeping `paused` and `last_tick`); return the rows as stored."""

    async def schedule_get(self, name: str) -> ScheduleRecord | None: ...

    async def schedule_list(self) -> list[ScheduleRecord]: ...

    async def schedule_set_paused(self, name: str, paused: bool) -> bool:
        """False when no such schedule."""

    async def schedule_fire(self, name: str, tick: int, record: WorkflowRecord) -> bool:
        """Unless the schedule is paused: insert the tick's workflow (its id derived from the tick, so only the
        first of several processes inserts it) and advance `last_tick`. True when this call inserted it."""
