"""Durable streams on both stores: ordered offsets, live readers, resume from an offset, retried steps, fork."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

import perdure
from helpers import query
from perdure import Client, NotLaunchedError, Perdure, StreamClosed, WorkflowNotFound, step, workflow
from perdure.messaging import CLOSE_STREAM_STEP, WRITE_STREAM_STEP

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    GATES.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


class Token(BaseModel):
    text: str


@step
async def wait_gate(key: str) -> None:
    await gate(key).wait()


@workflow
async def writer(n: int, close: bool) -> int:
    for i in range(n):
        await perdure.write_stream("out", i)
    if close:
        await perdure.close_stream("out")
    return n


@workflow
async def gated_writer(n: int) -> None:
    wid = perdure.workflow_id()
    for i in range(n):
        await wait_gate(f"{wid}:{i}")
        await perdure.write_stream("live", {"i": i})
    await perdure.close_stream("live")


@step(max_attempts=3, retry_interval=0)
async def generate(prompt: str) -> str:
    RUNS["generate"] += 1
    words = prompt.split()
    for i, word in enumerate(words):
        await perdure.write_stream("tokens", Token(text=word))
        if i == 1 and RUNS["generate"] < 3:
            raise RuntimeError("connection reset")  # written 2 tokens, then fails
    return " ".join(words)


@workflow
async def agent(prompt: str) -> str:
    answer = await generate(prompt)
    await perdure.close_stream("tokens")
    return answer


@workflow
async def writes_after_close() -> str:
    await perdure.write_stream("s", 1)
    await perdure.close_stream("s")
    await perdure.close_stream("s")  # harmless
    try:
        await perdure.write_stream("s", 2)
    except StreamClosed:
        return "refused"
    return "written?"


@workflow
async def staged_stream() -> None:
    wid = perdure.workflow_id()
    await perdure.write_stream("s", "a")  # position 0
    await perdure.write_stream("s", "b")  # position 1
    await wait_gate(wid)  # position 2
    await perdure.write_stream("s", "c")  # position 3
    await perdure.close_stream("s")


@workflow
def sync_writer(n: int) -> None:
    for i in range(n):
        perdure.write_stream_sync("sync", i)
    perdure.close_stream_sync("sync")


async def collect(it: Any, limit: int | None = None) -> list[Any]:
    out = []
    async for value in it:
        out.append(value)
        if limit is not None and len(out) == limit:
            break
    return out


# -- streams --------------------------------------------------------------------------------------------


async def test_values_in_order_and_the_stream_ends_when_closed(app: Perdure) -> None:
    h = await app.start(writer, 25, True, workflow_id="w")
    assert await collect(perdure.read_stream("w", "out")) == list(range(25))
    await h.result()
    steps = await app.list_steps("w")
    assert [s.name for s in steps] == [WRITE_STREAM_STEP] * 25 + [CLOSE_STREAM_STEP]
    rows = await query(app, 'SELECT "offset", value FROM {s}streams WHERE workflow_id = ? ORDER BY "offset"', "w")
    assert rows == [(i, str(i)) for i in range(25)] + [(25, None)]


async def test_the_stream_ends_when_the_writer_finishes_without_closing(app: Perdure) -> None:
    h = await app.start(writer, 3, False, workflow_id="unclosed")
    await h.result()
    assert await collect(perdure.read_stream("unclosed", "out")) == [0, 1, 2]
    assert await collect(perdure.read_stream("unclosed", "other-key")) == []


async def test_a_live_reader_gets_values_as_they_are_written(app: Perdure) -> None:
    await app.start(gated_writer, 3, workflow_id="live")
    got: list[Any] = []
    arrived = asyncio.Event()

    async def read() -> None:
        async for value in perdure.read_stream("live", "live"):
            got.append(value)
            arrived.set()

    reader = asyncio.create_task(read())
    for i in range(3):
        arrived.clear()
        gate(f"live:{i}").set()
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [{"i": j} for j in range(i + 1)]
    await asyncio.wait_for(reader, 5)  # ended by the close


async def test_a_reader_resumes_from_its_offset(app: Perdure) -> None:
    await (await app.start(writer, 10, True, workflow_id="resume")).result()
    first = await collect(perdure.read_stream("resume", "out"), limit=4)
    assert first == [0, 1, 2, 3]
    rest = await collect(perdure.read_stream("resume", "out", offset=len(first)))
    assert rest == [4, 5, 6, 7, 8, 9]
    assert await collect(perdure.read_stream("resume", "out", offset=10)) == []
    assert await collect(perdure.read_stream("resume", "out", offset=99)) == []


async def test_values_written_by_a_retried_step_are_not_duplicated(app: Perdure) -> None:
    h = await app.start(agent, "the quick brown fox", workflow_id="agent")
    tokens = await collect(perdure.read_stream("agent", "tokens", type=Token))
    assert await h.result() == "the quick brown fox"
    assert RUNS["generate"] == 3
    assert tokens == [Token(text=w) for w in ["the", "quick", "brown", "fox"]]
    rows = await query(app, "SELECT step_id, sub FROM {s}streams WHERE workflow_id = ? AND value IS NOT NULL", "agent")
    assert sorted(rows) == [(0, 1), (0, 2), (0, 3), (0, 4)]


async def test_write_after_close_is_refused(app: Perdure) -> None:
    assert await (await app.start(writes_after_close, workflow_id="closed")).result() == "refused"
    assert await collect(perdure.read_stream("closed", "s")) == [1]


async def test_sync_writers_and_readers(app: Perdure) -> None:
    h = await app.start(sync_writer, 5, workflow_id="sync-s")
    await h.result()
    assert await asyncio.to_thread(lambda: list(perdure.read_stream_sync("sync-s", "sync"))) == [0, 1, 2, 3, 4]
    assert await asyncio.to_thread(lambda: list(app.read_stream_sync("sync-s", "sync", 3))) == [3, 4]


async def test_fork_copies_stream_values_written_before_the_fork_point(app: Perdure) -> None:
    h = await app.start(staged_stream, workflow_id="src")
    gate("src").set()
    await h.result()
    forked = await app.fork("src", 1, new_workflow_id="dst")
    # The copy has the value of position 0 and writes the rest itself: each offset once, in order.
    reader = asyncio.create_task(collect(perdure.read_stream("dst", "s")))
    gate("dst").set()
    await forked.result()
    assert await asyncio.wait_for(reader, 5) == ["a", "b", "c"]
    rows = await query(app, 'SELECT "offset", value FROM {s}streams WHERE workflow_id = ? ORDER BY "offset"', "dst")
    assert rows == [(0, '"a"'), (1, '"b"'), (2, '"c"'), (3, None)]


async def test_reading_an_unknown_workflow_or_outside_a_runtime(app: Perdure) -> None:
    with pytest.raises(WorkflowNotFound):
        await collect(perdure.read_stream("nope", "s"))
    with pytest.raises(NotLaunchedError):
        await perdure.write_stream("s", 1)
    with pytest.raises(NotLaunchedError):
        await perdure.close_stream("s")


async def test_a_client_reads_a_stream_live(app: Perdure, db_url: str) -> None:
    await app.start(gated_writer, 2, workflow_id="client-live")
    async with Client(db_url) as client:
        reader = asyncio.create_task(collect(client.read_stream("client-live", "live")))
        gate("client-live:0").set()
        gate("client-live:1").set()
        assert await asyncio.wait_for(reader, 10) == [{"i": 0}, {"i": 1}]


async def test_deleting_a_workflow_deletes_its_messages_events_and_streams(app: Perdure) -> None:
    @workflow(name="streams.everything")
    async def everything() -> None:
        await perdure.set_event("k", 1)
        await perdure.write_stream("s", 1)
        await perdure.recv(timeout=0)

    await (await app.start(everything, workflow_id="gone")).result()
    await perdure.send("gone", "unread")
    assert await app.delete_workflows(["gone"]) == 1
    for table in ("messages", "events", "streams"):
        assert await query(app, f"SELECT count(*) FROM {{s}}{table}") == [(0,)]
