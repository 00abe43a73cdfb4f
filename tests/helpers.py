"""Helpers shared by tests: spying on wake-ups, reading the system database directly, store records."""

from __future__ import annotations

import asyncio
from typing import Any

from perdure import Perdure
from perdure.store.base import WorkflowRecord, WorkflowStatus, now_ms


def waiting_on(app: Perdure, key: str) -> asyncio.Event:
    """An event set as soon as someone in this process starts waiting for a wake-up on `key`."""
    notifier = app.store.notifier
    seen = asyncio.Event()
    subscribe = notifier.subscribe

    def spy(keys: list[str]) -> asyncio.Future[None]:
        if key in keys:
            seen.set()
        return subscribe(keys)

    notifier.subscribe = spy  # type: ignore[method-assign]
    return seen


async def query(app: Perdure, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Raw rows from the system database; `{s}` before a table name, `?` placeholders."""
    store: Any = app.store
    if hasattr(store, "schema"):
        rows = await store._read_all(sql.replace("{s}", store.schema + ".").replace("?", "%s"), params)
        return [tuple(r.values()) for r in rows]
    return [tuple(r) for r in store._read_all(sql.replace("{s}", ""), params)]


def pending_workflow(workflow_id: str, name: str, **fields: Any) -> WorkflowRecord:
    """A PENDING workflow row as a store test inserts it (`fields`: executor_id, started_at, ...)."""
    t = now_ms()
    return WorkflowRecord(
        workflow_id=workflow_id,
        name=name,
        status=WorkflowStatus.PENDING,
        inputs="{}",
        created_at=t,
        updated_at=t,
        **fields,
    )
