"""PostgreSQL wake-ups: LISTEN/NOTIFY reaches waiters of other processes; notify=off falls back to polling."""

from __future__ import annotations

import asyncio

import pytest

from perdure import Client, Perdure, workflow

pytestmark = pytest.mark.postgres

release: list[asyncio.Event] = []


@workflow(name="notify.gated")
async def gated(value: int) -> int:
    await release[0].wait()
    return value * 2


async def test_a_client_is_woken_by_notify(pg_url: str) -> None:
    release[:] = [asyncio.Event()]
    async with Perdure(pg_url) as app, Client(pg_url) as client:
        handle = await app.start(gated, 21, workflow_id="n-1")
        waiting = asyncio.create_task((await client.retrieve("n-1")).result(timeout=30))
        await asyncio.sleep(0)  # let the client register as a waiter
        before = client.store.stats.extra.get("notifications", 0)
        release[0].set()
        assert await handle.result() == 42
        assert await waiting == 42
        # The client's own store received the outcome over LISTEN/NOTIFY (not only by re-checking).
        assert client.store.stats.extra.get("notifications", 0) > before


async def test_notify_off_uses_no_listen_connection_and_still_gets_results(pg_url: str) -> None:
    release[:] = [asyncio.Event()]
    async with Perdure(pg_url) as app, Client(pg_url + "&notify=off") as client:
        assert client.store.notifies_other_processes is False
        handle = await app.start(gated, 5, workflow_id="n-2")
        waiting = asyncio.create_task((await client.retrieve("n-2")).result(timeout=30))
        release[0].set()
        assert await handle.result() == 10
        assert await waiting == 10
        assert client.store.stats.extra.get("notifications", 0) == 0
