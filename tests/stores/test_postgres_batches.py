"""PostgreSQL group commit: a batch of single-statement writes commits as a whole or not at all.

Such a batch runs without BEGIN/COMMIT, as one pipeline whose statements the server treats as one
implicit transaction up to the Sync. If one write fails, the store runs each write again alone, so a
write that had committed with the failed batch would be applied twice: an insert would then find its
own row and report the id as taken.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import pending_workflow
from perdure import Perdure, WorkflowStatus
from perdure.store.base import WorkflowRecord, now_ms

pytestmark = pytest.mark.postgres


def fresh(workflow_id: str) -> WorkflowRecord:
    return pending_workflow(workflow_id, "batches.none", started_at=now_ms())


async def test_a_failed_write_rolls_back_the_single_writes_batched_with_it(pg_url: str) -> None:
    async with Perdure(pg_url, maintenance_interval=3600) as app:
        store: Any = app.store
        sizes: list[int] = []  # every batch the store executes, by size (a spy on the real method)
        execute = store._execute_batch

        async def spy(batch: list[Any]) -> Any:
            sizes.append(len(batch))
            return await execute(batch)

        store._execute_batch = spy

        async def divide_by_zero(conn: Any) -> Any:
            await conn.execute("SELECT 1 / 0")

            async def done() -> None:
                return None

            return done

        # Queued in the same loop turn, so they share one batch: the insert first, then the failure.
        insert = asyncio.ensure_future(store.workflow_insert(fresh("batched-1")))
        failing = asyncio.ensure_future(store._write(divide_by_zero, single=True))
        results: tuple[Any, Any] = await asyncio.gather(insert, failing, return_exceptions=True)
        outcome, failure = results

        assert isinstance(failure, Exception) and "division by zero" in str(failure)
        # Not applied by the failed batch, so applied exactly once, alone: the row is the insert's own.
        assert not isinstance(outcome, BaseException) and outcome.inserted
        assert (await app.get_workflow("batched-1")).status == WorkflowStatus.PENDING
        assert sizes[0] >= 2 and set(sizes[1:]) == {1}  # together (failed), then each alone
