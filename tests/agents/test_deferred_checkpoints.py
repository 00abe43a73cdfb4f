"""Where a commit runs on the loop thread (SQLite), an agent step's checkpoint is written when the run's
next durable operation starts, and the run's last one shares the commit of its outcome.

The tests force that mode on PostgreSQL too (`commits_off_loop = False`), so both stores run it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.capabilities import ProcessHistory
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

import perdure
from perdure import Perdure, WorkflowStatus, workflow
from perdure.pydantic_ai import DurableAgent
from perdure.workflows import durable_call


@contextlib.asynccontextmanager
async def deferring(db_url: str) -> AsyncIterator[Perdure]:
    """A runtime in SQLite's mode on either store (`commits_off_loop = False`), without heartbeats or
    other maintenance writes in between."""
    async with Perdure(db_url, maintenance_interval=3600) as app:
        app.store.commits_off_loop = False
        yield app


seed = DurableAgent(Agent(TestModel(), instructions="You're an expert in geography.", name="deferred_seed"))


async def test_a_seed_agent_run_is_one_commit(db_url: str) -> None:
    commits = []
    async with deferring(db_url) as app:
        # Other writes landing in between (the first dequeues of queues other test modules declare) add
        # commits; one clean run is enough, and without the shared commit no run has fewer than two.
        for _ in range(50):
            before = app.store.stats.commits
            result = await seed.run("What is the capital of Mexico?")
            commits.append(app.store.stats.commits - before)
            if commits[-1] <= 1:
                break
        # The row, the model request's checkpoint and the outcome: one commit.
        assert min(commits) == 1
        steps = await app.list_steps(result.workflow_id)
        assert [s.name for s in steps] == ["deferred_seed__model.request"]
        assert (await app.get_workflow(result.workflow_id)).status == WorkflowStatus.SUCCESS


CALLS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}  # made per test, on its loop


async def turn_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    CALLS[f"model-{len(messages)}"] += 1
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("lookup", {"city": "Guadalajara"}, tool_call_id="t1")])
    return ModelResponse(parts=[TextPart("Mexico")])


async def lookup(city: str) -> str:
    CALLS["lookup"] += 1
    return "Mexico"


async def hold_second_request(messages: list[ModelMessage]) -> list[ModelMessage]:
    # Runs before each model request, in the workflow, after the tool's checkpoint.
    if len(messages) > 1 and not GATES["reached"].is_set():
        GATES["reached"].set()
        await GATES["release"].wait()
    return messages


held = DurableAgent(
    Agent(
        FunctionModel(turn_script),
        name="deferred_held",
        tools=[lookup],
        capabilities=[ProcessHistory(hold_second_request)],
    )
)


async def test_a_shutdown_between_steps_writes_the_deferred_checkpoint_first(db_url: str) -> None:
    CALLS.clear()
    GATES.update(reached=asyncio.Event(), release=asyncio.Event())
    async with deferring(db_url) as app:
        handle = await held.start("Where is Guadalajara?", workflow_id="deferred-shutdown")
        async with asyncio.timeout(30):
            await GATES["reached"].wait()
    # The process let go of the run between the tool and the next model request: the run resumes after
    # the tool.
    GATES["release"].set()
    async with Perdure(db_url, maintenance_interval=3600) as app:
        async with asyncio.timeout(30):
            raw = await (await app.retrieve(handle.workflow_id)).result()
        assert raw["output"] == "Mexico"
        names = [s.name for s in await app.list_steps(handle.workflow_id)]
    assert names == [
        "deferred_held__model.request",
        "deferred_held__function_toolset__<agent>.call_tool:lookup",
        "deferred_held__model.request",
    ]
    assert dict(CALLS) == {"model-1": 1, "lookup": 1, "model-3": 1}


async def quick_body() -> str:
    return "x"


@perdure.step
async def after_the_cancel() -> str:
    return "after"


@workflow(name="deferred.cancelled_wait")
async def cancelled_wait() -> str:
    await durable_call("first", quick_body, defer_checkpoint=True)  # its checkpoint waits (deferred)
    # The next operation is cancelled while it writes that checkpoint (a timeout around it, say).
    waiting = asyncio.ensure_future(durable_call("second", quick_body, defer_checkpoint=True))
    await GATES["writing"].wait()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    return await after_the_cancel()


async def test_a_cancelled_wait_for_a_deferred_checkpoint_does_not_stop_the_run(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    GATES.update(writing=asyncio.Event())
    async with deferring(db_url) as app:
        real = app.store.step_record

        async def slow(record: Any, executor_id: str) -> Any:
            GATES["writing"].set()
            await asyncio.sleep(0.05)  # the cancel lands here, mid-write
            return await real(record, executor_id)

        monkeypatch.setattr(app.store, "step_record", slow)
        handle = await app.start(cancelled_wait, workflow_id="deferred-cancelled-wait")
        async with asyncio.timeout(30):
            assert await handle.result() == "after"
        names = {s.step_id: s.name for s in await app.list_steps("deferred-cancelled-wait")}
    # The cancelled write was made again in the background; the operation that was cancelled took
    # position 1 and never ran.
    assert names == {0: "first", 2: "after_the_cancel"}


SEEN_BY_SIBLING: list[bool] = []


async def two_tools(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("send_note", {"to": "a"}, tool_call_id="n1"),
                ToolCallPart("long_lookup", {"q": "b"}, tool_call_id="n2"),
            ]
        )
    return ModelResponse(parts=[TextPart("done")])


async def send_note(to: str) -> str:
    await GATES["started"].wait()  # finishes while its sibling runs
    CALLS["send_note"] += 1
    GATES["sent"].set()
    return "sent"


async def long_lookup(q: str) -> str:
    # Still running after its sibling finished: the sibling's checkpoint must not wait for this one.
    GATES["started"].set()
    await GATES["sent"].wait()
    app = APPS[0]
    async with asyncio.timeout(5):
        while not any(s.name.endswith("call_tool:send_note") for s in await app.list_steps(RUN)):
            await asyncio.sleep(0.01)
    SEEN_BY_SIBLING.append(True)
    return "found"


APPS: list[Perdure] = []
RUN = "deferred-siblings"
siblings = DurableAgent(Agent(FunctionModel(two_tools), name="deferred_siblings", tools=[send_note, long_lookup]))


async def test_a_finished_tools_checkpoint_does_not_wait_for_the_tools_beside_it(db_url: str) -> None:
    CALLS.clear()
    SEEN_BY_SIBLING.clear()
    GATES.update(started=asyncio.Event(), sent=asyncio.Event())
    async with deferring(db_url) as app:
        APPS[:] = [app]
        async with asyncio.timeout(30):
            result = await siblings.run("go", workflow_id=RUN)
    assert result.output == "done"
    assert SEEN_BY_SIBLING == [True]
    assert CALLS["send_note"] == 1


BODIES: Counter[str] = Counter()


async def counted_body() -> str:
    BODIES["first"] += 1
    return "x"


@workflow(name="deferred.shutdown_between")
async def shutdown_between() -> str:
    await durable_call("first", counted_body, defer_checkpoint=True)  # its checkpoint waits (deferred)
    if not GATES["reached"].is_set():
        GATES["reached"].set()
        await GATES["release"].wait()  # not a durable operation: the checkpoint is still deferred here
    return await after_the_cancel()


async def test_a_shutdown_writes_a_deferred_checkpoint_before_it_lets_go(db_url: str) -> None:
    BODIES.clear()
    GATES.update(reached=asyncio.Event(), release=asyncio.Event())
    async with deferring(db_url) as app:
        handle = await app.start(shutdown_between, workflow_id="deferred-shutdown-between")
        async with asyncio.timeout(30):
            await GATES["reached"].wait()
    GATES["release"].set()
    async with Perdure(db_url, maintenance_interval=3600) as app:
        async with asyncio.timeout(30):
            assert await (await app.retrieve(handle.workflow_id)).result() == "after"
        names = [s.name for s in await app.list_steps(handle.workflow_id)]
    assert names == ["first", "after_the_cancel"]
    assert BODIES["first"] == 1  # recovery replayed it from the checkpoint written on the way out
