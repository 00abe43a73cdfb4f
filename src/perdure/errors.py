"""Every exception perdure raises on purpose. All derive from `PerdureError`."""

from __future__ import annotations

from typing import Any


class PerdureError(Exception):
    """Base class of perdure's own errors."""


class ConfigurationError(PerdureError):
    """The runtime, a decorator or a URL was set up wrongly (raised at the call site)."""


class NotLaunchedError(PerdureError):
    """A durable operation needs a launched `Perdure` runtime and there is none in this process."""


class SchemaVersionError(PerdureError):
    """The database was migrated by a newer perdure than this one; refusing to touch it."""


class SerializationError(PerdureError, TypeError):
    """A value could not be stored as JSON (or loaded back into its annotated type)."""


class WorkflowNotFound(PerdureError, LookupError):
    """No workflow with that id exists in the database."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow with id {workflow_id!r}")
        self.workflow_id = workflow_id


class UnknownWorkflowError(PerdureError, LookupError):
    """A stored workflow names a function that is not registered in this process."""


class WorkflowConflictError(PerdureError):
    """The workflow id is already used by a run of a different workflow function."""


class NonDeterminismError(PerdureError):
    """Replay met a different durable operation than the one recorded at this position.

    Raised when a workflow's code changed between the recorded run and the replay (or the workflow does
    something non-deterministic outside steps). Nothing recorded is overwritten.
    """

    def __init__(
        self,
        workflow_id: str,
        step_id: int,
        *,
        recorded: str,
        current: str,
        detail: str = "",
    ) -> None:
        msg = (
            f"workflow {workflow_id!r} is not deterministic at step {step_id}: "
            f"the recorded run has {recorded}, the code now has {current}"
        )
        if detail:
            msg += f" ({detail})"
        msg += ". Guard code changes with perdure.patched(...) so in-flight runs keep their old path."
        super().__init__(msg)
        self.workflow_id = workflow_id
        self.step_id = step_id
        self.recorded = recorded
        self.current = current


class WorkflowCancelled(PerdureError):
    """The workflow was cancelled (by `cancel()` or by reaching its timeout)."""

    def __init__(self, workflow_id: str, reason: str = "cancelled") -> None:
        super().__init__(f"workflow {workflow_id!r} was {reason}")
        self.workflow_id = workflow_id
        self.reason = reason


class MaxRecoveryAttemptsExceeded(PerdureError):
    """The workflow was recovered too many times without finishing (it keeps crashing its process)."""

    def __init__(self, workflow_id: str, attempts: int) -> None:
        super().__init__(
            f"workflow {workflow_id!r} was recovered {attempts} times without finishing and is now "
            "RETRIES_EXCEEDED; fix the cause, then resume() it"
        )
        self.workflow_id = workflow_id
        self.attempts = attempts


class StepTimeout(PerdureError, TimeoutError):
    """An async step ran longer than its `timeout`."""


class OwnershipLost(PerdureError):
    """Another executor took this workflow over; this process must stop running it.

    Internal control flow: the engine catches it and drops the run quietly.
    """


class DuplicateEnqueue(PerdureError):
    """A workflow with the same deduplication key is already queued or running."""

    def __init__(self, queue: str, dedup_key: str, existing_id: str) -> None:
        super().__init__(f"queue {queue!r} already holds a workflow with dedup_key {dedup_key!r}: {existing_id!r}")
        self.queue = queue
        self.dedup_key = dedup_key
        self.existing_id = existing_id


class StoreUnavailable(PerdureError):
    """The database could not be reached for longer than the configured outage limit."""


class WorkflowError(PerdureError):
    """A stored exception that could not be rebuilt as its original type.

    Carries the original type name, message and traceback text as recorded.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "", **extra: Any) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.extra = extra


class StreamClosed(PerdureError):
    """A value was written to a stream after `close_stream` closed it."""

    def __init__(self, workflow_id: str, key: str) -> None:
        super().__init__(f"stream {key!r} of workflow {workflow_id!r} is closed; nothing more can be written to it")
        self.workflow_id = workflow_id
        self.key = key
