"""Durable streaming: an agent run's events go to its durable stream; readers resume by offset."""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from perdure import Client, Perdure
from perdure.pydantic_ai import DurableAgent

streamed = Agent(TestModel(), name="streamer")


@streamed.tool_plain
def lookup(x: str) -> str:
    return "found " + x


durable_streamed = DurableAgent(streamed, stream_events=True)
quiet = DurableAgent(Agent(TestModel(), name="quiet"))


async def test_a_reader_that_disconnects_resumes_by_offset_and_sees_each_event_once(app: Perdure, db_url: str) -> None:
    handle = await durable_streamed.start("hi", workflow_id="stream-1")
    first: list[Any] = []
    async for event in app.read_stream("stream-1", "events"):
        first.append(event)
        if len(first) == 3:
            break  # the reader goes away mid-run
    async with Client(db_url) as client:  # and comes back from another connection
        rest = [e async for e in client.read_stream("stream-1", "events", offset=3)]
    raw = await handle.result(timeout=30)
    full = [e async for e in app.read_stream("stream-1", "events")]
    assert first + rest == full
    kinds = [e["event_kind"] for e in full]
    assert kinds[-1] == "perdure_result" and full[-1]["output"] == raw["output"]
    assert "function_tool_call" in kinds and "function_tool_result" in kinds and "part_delta" in kinds
    assert kinds.count("function_tool_result") == 1


async def test_streaming_is_off_unless_asked(app: Perdure) -> None:
    await quiet.run("hello", workflow_id="no-stream")
    assert [e async for e in app.read_stream("no-stream", "events")] == []
