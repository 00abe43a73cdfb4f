"""perdure: durable execution for Python, made for AI agents.

Plain functions become workflows and steps whose progress is checkpointed to SQLite or PostgreSQL, so a run
survives crashes and restarts and resumes where it stopped.
"""

from ._management import WorkflowHandle
from .client import Client
from .errors import (
    ConfigurationError,
    DuplicateEnqueue,
    MaxRecoveryAttemptsExceeded,
    NonDeterminismError,
    NotLaunchedError,
    PerdureError,
    SchemaVersionError,
    SerializationError,
    StepTimeout,
    StoreUnavailable,
    UnknownWorkflowError,
    WorkflowCancelled,
    WorkflowConflictError,
    WorkflowError,
    WorkflowNotFound,
)
from .messaging import sleep, sleep_sync
from .runtime import Perdure
from .store.base import WorkflowStatus
from .workflows import (
    StepInfo,
    WorkflowInfo,
    now,
    now_sync,
    patched,
    patched_sync,
    step,
    uuid4,
    uuid4_sync,
    workflow,
    workflow_id,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConfigurationError",
    "DuplicateEnqueue",
    "MaxRecoveryAttemptsExceeded",
    "NonDeterminismError",
    "NotLaunchedError",
    "Perdure",
    "PerdureError",
    "SchemaVersionError",
    "SerializationError",
    "StepInfo",
    "StepTimeout",
    "StoreUnavailable",
    "UnknownWorkflowError",
    "WorkflowCancelled",
    "WorkflowConflictError",
    "WorkflowError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
    "now",
    "now_sync",
    "patched",
    "patched_sync",
    "sleep",
    "sleep_sync",
    "step",
    "uuid4",
    "uuid4_sync",
    "workflow",
    "workflow_id",
]
