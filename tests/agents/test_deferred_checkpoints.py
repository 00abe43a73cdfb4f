"""Where a commit runs on the loop thread (SQLite), an agent step's checkpoint is written when the run's
next durable operation starts, and the run's last one shares the commit of its outcome.

The tests force that mode on PostgreSQL too (`commits_off_loop = False`), so both stores run it.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from pydantic_ai import Agent
from pydantic_ai.capabilities import ProcessHistory
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from perdure import Perdure, WorkflowStatus
from perdure.pydantic_ai import DurableAgent

seed = DurableAgent(Agent(TestModel(), instructions="You're an expert in geography.", name="deferred_seed"))


async def test_a_seed_agent_run_is_one_commit(db_url: str) -> None:
    commits = []
    async with Perdure(db_url, maintenance_interval=3600) as app:  # no heartbeats in between
        app.store.commits_off_loop = False
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
GATES: dict[str, asyncio.Event] = {}  # "reached", "release": made per test, on its loop


async def turn_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    CALLS[f"model-{len(messages)}"] += 1
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("lookup", {"city": "Guadalajara"}, tool_call_id="t1")])
    return ModelResponse(parts=[TextPart("Mexico")])


async def lookup(city: str) -> str:
    CALLS["lookup"] += 1
    return "Mexico"


async def hold_second_request(messages: list[ModelMessage]) -> list[ModelMessage]:
    # Runs before each model request, in the workflow: the tool's checkpoint is still deferred here.
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
    async with Perdure(db_url, maintenance_interval=3600) as app:
        app.store.commits_off_loop = False
        handle = await held.start("Where is Guadalajara?", workflow_id="deferred-shutdown")
        async with asyncio.timeout(30):
            await GATES["reached"].wait()
    # The process let go of the run between the tool and the next model request: the tool's checkpoint
    # was written on the way out, so the run resumes after it.
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
