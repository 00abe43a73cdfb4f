"""An agent step's checkpoint commits while the agent graph prepares the next step, never later than that.

Model and tool steps hand their result on before their commit is acknowledged (`record_soon`), so the
round trip overlaps pydantic-ai's own work between steps. These tests slow every checkpoint write down
(a delay in front of the real store) and check, from inside each model request and each tool, that every
earlier step is already committed: no model is asked, no tool (checkpointed or inline) runs, and no
outcome is written while an earlier checkpoint could still be lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import Tool

import perdure
from perdure import Perdure, WorkflowCancelled, WorkflowStatus, workflow
from perdure.pydantic_ai import DurableAgent, PerdureDurability

APP: list[Perdure] = []
SEEN: list[tuple[str, int]] = []  # (who, how many steps of the run were committed when it started)


async def committed(workflow_id: str) -> int:
    return len(await APP[0].list_steps(workflow_id))


async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(1 for m in messages if m.kind == "request")
    SEEN.append((f"model-{turn}", await committed(RUN_ID)))
    if turn == 1:
        return ModelResponse(parts=[ToolCallPart("checked", {"x": 1}, tool_call_id="c1")])
    if turn == 2:
        return ModelResponse(parts=[ToolCallPart("inline", {"x": 2}, tool_call_id="c2")])
    return ModelResponse(parts=[TextPart("done")])


async def checked(x: int) -> int:
    SEEN.append(("checked", await committed(RUN_ID)))
    return x


async def inline(x: int) -> int:
    SEEN.append(("inline", await committed(RUN_ID)))
    return x


RUN_ID = "order-1"
ordered = DurableAgent(
    Agent(
        FunctionModel(script),
        name="ordered",
        tools=[Tool(checked), Tool(inline, metadata={"perdure": False})],
    )
)


@pytest.fixture
def slow_checkpoints(app: Perdure, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every step checkpoint reaches the real store 20 ms late: long after the agent graph moved on."""
    real = app.store.step_record

    async def late(record: Any, executor_id: str) -> Any:
        await asyncio.sleep(0.02)
        return await real(record, executor_id)

    monkeypatch.setattr(app.store, "step_record", late)
    APP[:] = [app]
    SEEN.clear()
    yield
    APP.clear()


async def test_each_model_request_and_tool_starts_after_every_earlier_checkpoint_committed(
    app: Perdure, slow_checkpoints: None
) -> None:
    result = await ordered.run("go", workflow_id=RUN_ID)
    assert result.output == "done"
    # model-1 (step 0) -> checked (step 1) -> model-2 (step 2) -> inline, no step -> model-3 (step 3)
    assert SEEN == [("model-1", 0), ("checked", 1), ("model-2", 2), ("inline", 3), ("model-3", 3)]
    # The outcome was written after the last model step's checkpoint, which is there.
    assert await committed(RUN_ID) == 4
    assert (await app.get_workflow(RUN_ID)).status == WorkflowStatus.SUCCESS


after_agent: list[int] = []
capability_agent = Agent(
    FunctionModel(script), name="ordered_cap", tools=[Tool(checked)], capabilities=[PerdureDurability()]
)


@perdure.step
async def after_the_agent() -> None:
    after_agent.append(await committed(RUN_ID))


@workflow(name="order.agent_then_step")
async def agent_then_step() -> str:
    output = (await capability_agent.run("go")).output
    await after_the_agent()
    return output


async def test_a_step_after_an_agent_run_starts_after_its_last_checkpoint(app: Perdure, slow_checkpoints: None) -> None:
    after_agent.clear()
    handle = await app.start(agent_then_step, workflow_id=RUN_ID)
    assert await handle.result() == "done"
    # The agent ran model-1, checked, model-2, inline (not a tool of this agent: the model asks for it,
    # pydantic-ai answers that it does not exist), model-3; the user step saw all of its checkpoints.
    steps = [s.name for s in await app.list_steps(RUN_ID)]
    assert steps[-1] == "after_the_agent"
    assert after_agent == [len(steps) - 1]


refused_tool: list[int] = []


async def cancelling_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    # The run is cancelled in the database while its first model step runs: that step's checkpoint is
    # refused when it reaches the store, after the agent graph has moved on towards the tool.
    await APP[0].store.workflow_cancel("order-cancelled")
    return ModelResponse(parts=[ToolCallPart("never", {"x": 1}, tool_call_id="c1")])


async def never(x: int) -> int:
    refused_tool.append(x)
    return x


cancelled_agent = DurableAgent(Agent(FunctionModel(cancelling_script), name="cancelled", tools=[never]))


async def test_a_refused_checkpoint_stops_the_run_before_the_next_step(app: Perdure, slow_checkpoints: None) -> None:
    refused_tool.clear()
    with pytest.raises(WorkflowCancelled):
        await cancelled_agent.run("go", workflow_id="order-cancelled")
    assert refused_tool == []
    assert (await app.get_workflow("order-cancelled")).status == WorkflowStatus.CANCELLED
    assert await app.list_steps("order-cancelled") == []
