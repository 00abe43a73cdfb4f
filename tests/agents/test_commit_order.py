"""An agent step's checkpoint commits while the agent graph prepares the next step, never later than that.

Model and tool steps hand their result on before their commit is acknowledged (`record_soon`), so the
round trip overlaps pydantic-ai's own work between steps. These tests slow every checkpoint write down
(a delay in front of the real store) and check, from inside each model request and each tool, that every
earlier step is already committed: no model is asked, no tool (checkpointed or inline) runs, and no
outcome is written while an earlier checkpoint could still be lost. Output functions and validators
wait too; a checkpoint refused in the background stops the run and what runs beside it; and tool calls
running side by side keep their usage apart, so a replay counts the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.output import ToolOutput
from pydantic_ai.tools import RunContext, Tool

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


def delay_checkpoints(app: Perdure, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every step checkpoint of `app` reaches the real store `seconds` late (a delay, not a stand-in)."""
    real = app.store.step_record

    async def late(record: Any, executor_id: str) -> Any:
        await asyncio.sleep(seconds)
        return await real(record, executor_id)

    monkeypatch.setattr(app.store, "step_record", late)
    APP[:] = [app]


@pytest.fixture
def slow_checkpoints(app: Perdure, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every step checkpoint reaches the real store 20 ms late: long after the agent graph moved on."""
    delay_checkpoints(app, monkeypatch, 0.02)
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


slow_tool: list[str] = []


async def parallel_cancel_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(
        parts=[
            ToolCallPart("cancel_in_store", {}, tool_call_id="c1"),
            ToolCallPart("wait_forever", {}, tool_call_id="c2"),
        ]
    )


async def cancel_in_store() -> str:
    # Stands in for a cancel from another process: only the database knows, so the refusal of this
    # tool's own checkpoint is how this process learns it.
    await APP[0].store.workflow_cancel("order-parallel")
    return "cancelled it"


async def wait_forever() -> str:
    slow_tool.append("started")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        slow_tool.append("cancelled")
        raise
    return "never"


parallel_cancel = DurableAgent(
    Agent(FunctionModel(parallel_cancel_script), name="parallel_cancel", tools=[cancel_in_store, wait_forever])
)


async def test_a_refused_checkpoint_interrupts_the_steps_running_beside_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_tool.clear()
    # No maintenance pass (it would notice the cancel in the database on its own): the refusal of the
    # checkpoint is the only way this process learns of it.
    async with Perdure(db_url, maintenance_interval=3600) as quiet:
        delay_checkpoints(quiet, monkeypatch, 0.02)
        with pytest.raises(WorkflowCancelled):
            async with asyncio.timeout(30):  # guards a hang only: the sibling must be interrupted at once
                await parallel_cancel.run("go", workflow_id="order-parallel")
        assert slow_tool == ["started", "cancelled"]
        assert (await quiet.get_workflow("order-parallel")).status == WorkflowStatus.CANCELLED


async def send_answer(answer: str) -> str:
    SEEN.append(("output function", await committed(RUN_ID)))
    return answer.upper()


async def output_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"answer": "yes"}, tool_call_id="o1")])


output_agent = DurableAgent(Agent(FunctionModel(output_script), name="output_fn", output_type=ToolOutput(send_answer)))


async def validated_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("fine")])


validated_agent_plain = Agent(FunctionModel(validated_script), name="validated")


@validated_agent_plain.output_validator
async def check_output(output: str) -> str:
    SEEN.append(("output validator", await committed(RUN_ID)))
    return output


validated_agent = DurableAgent(validated_agent_plain)


async def test_an_output_function_acts_on_a_committed_model_response(app: Perdure, slow_checkpoints: None) -> None:
    assert (await output_agent.run("go", workflow_id=RUN_ID)).output == "YES"
    assert SEEN == [("output function", 1)]


async def test_an_output_validator_checks_a_committed_model_response(app: Perdure, slow_checkpoints: None) -> None:
    assert (await validated_agent.run("go", workflow_id=RUN_ID)).output == "fine"
    assert SEEN == [("output validator", 1)]


async def fan_out_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("echo", {"n": n}, tool_call_id=f"e{n}") for n in range(4)])
    return ModelResponse(parts=[TextPart("echoed")])


async def echo(n: int) -> int:
    if n % 2:
        await asyncio.sleep(0.005)  # finishes after its even siblings, while they are counted
    return n


fan_out = DurableAgent(Agent(FunctionModel(fan_out_script), name="fan_out", tools=[echo]))


async def test_parallel_tool_calls_count_the_same_usage_when_replayed(app: Perdure) -> None:
    first = await fan_out.run("go", workflow_id="fan-1")
    assert (first.usage.tool_calls, first.usage.requests) == (4, 2)
    # Replaying the four tool checkpoints must not count a sibling's tool call into another's.
    replayed = await (await app.fork("fan-1", from_step=5)).result()
    assert (replayed["usage"]["tool_calls"], replayed["usage"]["requests"]) == (4, 2)


async def check_x(ctx: RunContext[None], x: int) -> None:
    SEEN.append(("args validator", await committed(RUN_ID)))


async def validated_script_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("inline", {"x": 5}, tool_call_id="v1")])
    return ModelResponse(parts=[TextPart("done")])


validated_inline = DurableAgent(
    Agent(
        FunctionModel(validated_script_tool),
        name="validated_inline",
        tools=[Tool(inline, metadata={"perdure": False}, args_validator=check_x)],
    )
)


async def test_an_inline_tools_argument_validator_checks_a_committed_model_response(
    app: Perdure, slow_checkpoints: None
) -> None:
    assert (await validated_inline.run("go", workflow_id=RUN_ID)).output == "done"
    assert SEEN[:2] == [("args validator", 1), ("inline", 1)]


delegate = DurableAgent(Agent(TestModel(custom_output_text="delegated"), name="order_delegate"))
retried_attempts: list[int] = []


async def delegate_then_fail_once(ctx: RunContext[None]) -> str:
    answer = (await delegate.run("sub-question", usage=ctx.usage)).output
    retried_attempts.append(1)
    if len(retried_attempts) == 1:
        raise ConnectionError("flaky after the delegate answered")
    return answer


async def retry_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("delegate_then_fail_once", {}, tool_call_id="r1")])
    return ModelResponse(parts=[TextPart("retried")])


retrying = DurableAgent(
    Agent(
        FunctionModel(retry_script),
        name="retrying",
        tools=[Tool(delegate_then_fail_once, metadata={"perdure": {"max_attempts": 2, "retry_interval": 0}})],
    )
)


async def test_a_retried_tools_usage_counts_every_attempt_when_replayed(app: Perdure) -> None:
    retried_attempts.clear()
    first = await retrying.run("go", workflow_id="retry-usage")
    assert retried_attempts == [1, 1]
    # Two model requests of this agent, one of the delegate per attempt.
    assert first.usage.requests == 4
    replayed = await (await app.fork("retry-usage", from_step=2)).result()
    assert replayed["usage"]["requests"] == 4
    assert retried_attempts == [1, 1]  # the tool was replayed, not run again


answers: list[int] = []


async def counting_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) > 1:
        return ModelResponse(parts=[TextPart(f"answer {answers[-1]}")])
    answers.append(len(answers) + 1)
    if len(answers) == 1:
        # Cancel the run while this step's checkpoint is still on its way to the database.
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: loop.create_task(APP[0].cancel("order-resume")))
    return ModelResponse(parts=[ToolCallPart("noted", {"x": answers[-1]}, tool_call_id="k1")])


async def noted(x: int) -> int:
    return x


counting = DurableAgent(Agent(FunctionModel(counting_script), name="counting", tools=[noted]))


async def test_a_cancelled_run_ends_after_its_last_checkpoint_write_so_a_resume_cannot_race_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers.clear()
    async with Perdure(db_url, maintenance_interval=3600) as quiet:
        delay_checkpoints(quiet, monkeypatch, 0.3)
        handle = await counting.start("go", workflow_id="order-resume")
        with pytest.raises(WorkflowCancelled):
            await handle.result()
        resumed = await quiet.resume("order-resume")
        raw = await resumed.result()
        # Whatever the resumed run asked the model, its checkpoint holds the same answer: no write of
        # the cancelled run landed after the resume.
        steps = await quiet.list_steps("order-resume")
        assert steps[0].output is not None and f'"x":{answers[-1]}' in steps[0].output.replace(" ", "")
        assert raw["output"] == f"answer {answers[-1]}"


cleanup: list[str] = []


async def one_tool_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("quick", {}, tool_call_id="q1")])
    return ModelResponse(parts=[TextPart("not reached")])


async def quick() -> str:
    # Cancel the run while this tool's checkpoint is on its way: its refusal arrives after the cancel.
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, lambda: loop.create_task(APP[0].cancel("order-tidy")))
    return "quick"


tidy_agent = Agent(FunctionModel(one_tool_script), name="tidy", tools=[quick], capabilities=[PerdureDurability()])


@workflow(name="order.tidy")
async def tidy_workflow() -> str:
    try:
        return (await tidy_agent.run("go")).output
    finally:
        cleanup.append("start")
        await asyncio.sleep(0.5)  # still tidying up when the refusal of the tool's checkpoint arrives
        cleanup.append("done")


async def test_a_refusal_after_a_cancel_does_not_cut_the_cleanup_short(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cleanup.clear()
    async with Perdure(db_url, maintenance_interval=3600) as quiet:
        delay_checkpoints(quiet, monkeypatch, 0.3)
        handle = await quiet.start(tidy_workflow, workflow_id="order-tidy")
        with pytest.raises(WorkflowCancelled):
            await handle.result()
        assert cleanup == ["start", "done"]
