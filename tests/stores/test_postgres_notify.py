"""PostgreSQL wake-ups: LISTEN/NOTIFY reaches waiters of other processes; notify=off falls back to polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from helpers import query
from perdure import Client, Perdure, workflow, write_stream
from perdure.store.notify import workflow_key

pytestmark = pytest.mark.postgres

release: list[asyncio.Event] = []


@workflow(name="notify.gated")
async def gated(value: int) -> int:
    await release[0].wait()
    return value * 2


async def watched(app: Perdure, workflow_id: str) -> None:
    """Return once a waiter somewhere has asked for `workflow_id`'s finish to be announced."""
    async with asyncio.timeout(10):
        while not (await query(app, "SELECT watched FROM {s}workflows WHERE workflow_id = ?", workflow_id))[0][0]:
            await asyncio.sleep(0.005)


def heard(client: Client) -> list[str]:
    """Every key the client's LISTEN connection passes on, in arrival order (which is commit order)."""
    keys: list[str] = []
    fire = client.store.notifier.fire

    def spy(got: Iterable[str]) -> None:
        got = list(got)
        keys.extend(got)
        fire(got)

    client.store.notifier.fire = spy  # type: ignore[method-assign]
    return keys


async def until_heard(keys: list[str], key: str) -> None:
    async with asyncio.timeout(10):
        while key not in keys:
            await asyncio.sleep(0.005)


async def test_a_client_is_woken_by_notify(pg_url: str) -> None:
    release[:] = [asyncio.Event()]
    async with Perdure(pg_url) as app, Client(pg_url) as client:
        keys = heard(client)
        handle = await app.start(gated, 21, workflow_id="n-1")
        waiting = asyncio.create_task((await client.retrieve("n-1")).result(timeout=30))
        await watched(app, "n-1")
        release[0].set()
        assert await handle.result() == 42
        assert await waiting == 42
        # The client's own store receives the outcome over LISTEN/NOTIFY (not only by re-checking).
        await until_heard(keys, workflow_key("n-1"))


async def test_only_a_finish_someone_waits_for_elsewhere_is_announced(pg_url: str) -> None:
    release[:] = [asyncio.Event()]
    release[0].set()
    async with Perdure(pg_url) as app, Client(pg_url) as client:
        keys = heard(client)
        assert await gated(1) == 2  # called here and waited for here: nobody else needs to hear of it
        (unwatched,) = await client.list_workflows(name="notify.gated")
        release[:] = [asyncio.Event()]
        handle = await app.start(gated, 2, workflow_id="n-watched")
        waiting = asyncio.create_task((await client.retrieve("n-watched")).result(timeout=30))
        await watched(app, "n-watched")
        release[0].set()
        assert await waiting == 4 and await handle.result() == 4
        await until_heard(keys, workflow_key("n-watched"))
        # Had the first run been announced, its notification would have arrived before this one.
        assert workflow_key(unwatched.workflow_id) not in keys


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


@workflow(name="notify.streaming")
async def streaming(n: int) -> int:
    for i in range(n):
        await write_stream("out", i)
    await release[0].wait()
    return n  # ends the stream without closing it: the reader learns of it from the finish


async def test_a_stream_reader_elsewhere_hears_the_writer_finish(pg_url: str) -> None:
    release[:] = [asyncio.Event()]
    async with Perdure(pg_url) as app, Client(pg_url) as client:
        keys = heard(client)
        handle = await app.start(streaming, 2, workflow_id="n-stream")
        reading = asyncio.create_task(collect(client.read_stream("n-stream", "out")))
        await watched(app, "n-stream")
        release[0].set()
        assert await handle.result() == 2
        assert await reading == [0, 1]
        await until_heard(keys, workflow_key("n-stream"))


async def collect(values: AsyncIterator[Any]) -> list[Any]:
    return [v async for v in values]
