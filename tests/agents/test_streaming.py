"""Durable streaming: an agent run's events go to its durable stream; readers resume by offset."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic_ai import Agent, UsageLimitExceeded
from pydantic_ai.exceptions import UserError
from pydantic_ai.models.test import TestModel
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.usage import UsageLimits

from perdure import Client, ConfigurationError, Perdure, workflow
from perdure.pydantic_ai import DurableAgent, model_response

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


followed = DurableAgent(Agent(TestModel(), name="followed", tools=[lookup]))


@workflow(name="streaming.iterate")
async def iterate(prompt: str) -> list[str]:
    async with followed.iter(prompt) as run:
        nodes = [type(node).__name__ async for node in run]
    assert run.result is not None
    return [*nodes, run.result.output]


async def test_run_stream_events_follows_a_run_live_and_ends_with_its_result(app: Perdure) -> None:
    async with followed.run_stream_events("hi", workflow_id="follow-1") as events:
        got = [e async for e in events]
    plain = [e async for e in _plain_events(followed.agent, "hi")]
    # The same kinds of events as the plain agent's own run_stream_events, in the same order.
    assert [e.event_kind for e in got] == [e.event_kind for e in plain]
    last = got[-1]
    assert isinstance(last, AgentRunResultEvent)
    assert last.result.output == plain[-1].result.output  # type: ignore[union-attr]
    assert events.workflow_id == "follow-1" and events.result is not None
    assert events.result.usage == plain[-1].result.usage  # type: ignore[union-attr]
    # The events went to the run's durable stream (the agent itself does not stream every run).
    stored = [e async for e in app.read_stream("follow-1", "events")]
    assert len(stored) == events.offset and stored[-1]["event_kind"] == "perdure_result"
    steps = await app.list_steps("follow-1")
    assert "followed__function_toolset__<agent>.call_tool:lookup" in [s.name for s in steps]
    # Streamed model requests are checkpointed as whole responses, with their usage.
    streamed = [r for s in steps if s.name == "followed__model.request_stream" and (r := model_response(s))]
    assert len(streamed) == 2
    assert sum(r.usage.output_tokens for r in streamed) == events.result.usage.output_tokens > 0


gate = asyncio.Event()


async def wait_for_reader(x: str) -> str:
    await gate.wait()  # set by the test only once it has read this call's event: the run is followed live
    return "let through"


gated = DurableAgent(Agent(TestModel(), name="gated", tools=[wait_for_reader]))


async def test_run_stream_events_yields_each_event_while_the_run_goes_on(app: Perdure) -> None:
    gate.clear()
    seen: list[str] = []
    async with gated.run_stream_events("hi") as events:
        async for event in events:
            seen.append(event.event_kind)
            if event.event_kind == "function_tool_call":
                gate.set()
    assert seen.index("function_tool_call") < seen.index("function_tool_result")
    assert events.result is not None and "let through" in events.result.output


async def test_run_stream_events_resumes_by_workflow_id_and_offset(app: Perdure) -> None:
    async with followed.run_stream_events("hi", workflow_id="follow-2") as events:
        first = [await events.__anext__() for _ in range(3)]
    offset = events.offset
    assert offset == 3
    async with followed.run_stream_events(workflow_id="follow-2", offset=offset) as again:
        rest = [e async for e in again]
    async with followed.run_stream_events(workflow_id="follow-2") as whole:
        everything = [e async for e in whole]
    assert [e.event_kind for e in first + rest] == [e.event_kind for e in everything]
    assert first + rest[:-1] == everything[:-1]
    assert len(await app.list_workflows(name="followed.run")) == 1  # attached, never started twice


async def test_run_stream_streams_the_final_text(app: Perdure) -> None:
    async with followed.run_stream("hi", workflow_id="follow-3") as run:
        assert run.workflow_id == "follow-3"
        deltas = [d async for d in run.stream_text(delta=True)]
        output = await run.get_output()
    assert "".join(deltas) == output == '{"lookup":"found a"}'
    assert len(deltas) > 1  # streamed in pieces, not at the end
    async with followed.run_stream(workflow_id="follow-3") as again:
        assert [t async for t in again.stream_text()][-1] == output
    async with followed.run_stream(workflow_id="follow-3") as third:
        events = [e async for e in third.stream_events()]
    assert isinstance(events[-1], AgentRunResultEvent) and third.result is not None
    assert third.result.output == output and "function_tool_result" in [e.event_kind for e in events]


async def test_iter_inside_a_workflow_checkpoints_each_call(app: Perdure) -> None:
    handle = await app.start(iterate, "hi", workflow_id="iter-1")
    nodes = await handle.result(timeout=30)
    assert nodes[-1] == '{"lookup":"found a"}'
    assert "CallToolsNode" in nodes and "End" in nodes
    steps = [s.name for s in await app.list_steps("iter-1")]
    assert steps.count("followed__model.request") == 2
    assert "followed__function_toolset__<agent>.call_tool:lookup" in steps


async def test_following_inside_a_workflow_and_iter_outside_are_refused(app: Perdure) -> None:
    with pytest.raises(UserError, match="iter\\(\\) can be durable only inside a perdure workflow"):
        async with followed.iter("hi"):
            pass

    @workflow(name="streaming.nested_follow")
    async def nested() -> None:
        async with followed.run_stream_events("hi") as events:
            async for _ in events:
                pass

    with pytest.raises(UserError, match="cannot be used inside a workflow or step"):
        await nested()
    with pytest.raises(ConfigurationError, match="offset must be a non-negative integer"):
        followed.run_stream_events("hi", offset=-1)


async def _plain_events(agent: Agent[None, str], prompt: str) -> Any:
    async with agent.run_stream_events(prompt) as events:
        async for event in events:
            yield event


async def test_a_failed_run_ends_the_events_with_its_error(app: Perdure) -> None:
    kinds: list[str] = []
    with pytest.raises(UsageLimitExceeded):
        async with followed.run_stream_events("hi", usage_limits=UsageLimits(request_limit=1)) as events:
            async for event in events:
                kinds.append(event.event_kind)
    assert "function_tool_result" in kinds and events.result is None
