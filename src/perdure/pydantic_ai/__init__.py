"""Durable Pydantic AI agents: `DurableAgent(agent)` or `Agent(..., capabilities=[PerdureDurability()])`.

Needs the extra: `pip install 'perdure[pydantic-ai]'`.
"""

from ._agent import DurableAgent, DurableRunResult
from ._durability import NON_RETRYABLE, PerdureDurability, PerdureOperationBackend, StepConfig
from ._events import PerdureEventWaiter, fail, resolve

__all__ = [
    "NON_RETRYABLE",
    "DurableAgent",
    "DurableRunResult",
    "PerdureDurability",
    "PerdureEventWaiter",
    "PerdureOperationBackend",
    "StepConfig",
    "fail",
    "resolve",
]
