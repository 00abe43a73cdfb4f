"""Durable Pydantic AI agents: `DurableAgent(agent)` or `Agent(..., capabilities=[PerdureDurability()])`.

Needs the extra: `pip install 'perdure[pydantic-ai]'`.
"""

from ._agent import DurableAgent, DurableRunResult
from ._durability import NON_RETRYABLE, PerdureDurability, PerdureOperationBackend, StepConfig, model_response
from ._events import PerdureEventWaiter, fail, resolve
from ._stream import EVENTS_STREAM, DurableRunEvents, DurableStreamedRun

__all__ = [
    "EVENTS_STREAM",
    "NON_RETRYABLE",
    "DurableAgent",
    "DurableRunEvents",
    "DurableRunResult",
    "DurableStreamedRun",
    "PerdureDurability",
    "PerdureEventWaiter",
    "PerdureOperationBackend",
    "StepConfig",
    "fail",
    "model_response",
    "resolve",
]
