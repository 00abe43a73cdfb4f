"""Recovery meets work whose code this process lacks: a clear error, and the work is left for others."""

from __future__ import annotations

import asyncio
import logging

import pytest

from perdure import Perdure
from perdure.store.base import WorkflowRecord, now_ms


async def test_unknown_workflow_of_a_dead_executor_is_reported_and_left_alone(
    app: Perdure, caplog: pytest.LogCaptureFixture
) -> None:
    t = now_ms()
    ghost = WorkflowRecord(
        workflow_id="ghost-1",
        name="somewhere.else.not_imported",
        status="PENDING",
        inputs="{}",
        created_at=t,
        updated_at=t,
        executor_id="executor-that-died",
    )
    with caplog.at_level(logging.ERROR, logger="perdure"):
        assert (await app.store.workflow_insert(ghost)).inserted
        for _ in range(400):  # the maintenance loop looks every 50 ms in this fixture
            if any("ghost-1" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    messages = [r.getMessage() for r in caplog.records if "ghost-1" in r.getMessage()]
    assert len(messages) == 1, "reported exactly once"
    assert "somewhere.else.not_imported" in messages[0] and "not registered" in messages[0]
    info = await app.get_workflow("ghost-1")
    assert (info.status.value, info.executor_id, info.recovery_attempts) == ("PENDING", "executor-that-died", 0)
