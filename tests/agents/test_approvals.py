"""Human in the loop: approvals wait durably inside the run and are answered with a resume token."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.external_events import ExternalEventError, wait_for_external_event
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, RunContext, Tool

from perdure import Client, Perdure, WorkflowStatus
from perdure.pydantic_ai import DurableAgent, fail, resolve

refunds: list[int] = []
asked: list[str] = []
token_ready: list[asyncio.Event] = []


def refund(amount: int) -> str:
    refunds.append(amount)
    return f"refunded {amount}"


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returns and not any(getattr(p, "part_kind", "") == "retry-prompt" for m in messages for p in m.parts):
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 30}, tool_call_id="r1")])
    last = messages[-1].parts[-1]
    return ModelResponse(parts=[TextPart(f"final: {getattr(last, 'content', '')}")])


async def hand_out(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> None:
    asked.append(token)
    token_ready[0].set()
    return None  # someone else answers, later


approving = DurableAgent(
    Agent(
        FunctionModel(script),
        name="refunds",
        tools=[Tool(refund, requires_approval=True)],
        capabilities=[RequestInput(ask=hand_out, name="approve_refund")],
    )
)


@pytest.fixture(autouse=True)
def _reset() -> None:
    refunds.clear()
    asked.clear()
    token_ready[:] = [asyncio.Event()]


async def _wait_for_token() -> str:
    await asyncio.wait_for(token_ready[0].wait(), 30)
    return asked[-1]


async def test_approval_resumes_the_run_and_runs_the_tool(app: Perdure) -> None:
    handle = await approving.start("refund me", workflow_id="refund-1")
    token = await _wait_for_token()
    assert token.startswith("refund-1/")
    assert refunds == []  # nothing happens before the approval
    await resolve(token, {"approvals": {"r1": True}})
    raw = await handle.result(timeout=30)
    assert raw["output"] == "final: refunded 30"
    assert refunds == [30] and len(asked) == 1
    names = [s.name for s in await app.list_steps("refund-1")]
    assert "refunds__external_event.approve_refund.token" in names
    assert "refunds__external_event.approve_refund.ask" in names


async def test_denial_reaches_the_model_as_a_denial(app: Perdure) -> None:
    handle = await approving.start("refund me", workflow_id="refund-2")
    token = await _wait_for_token()
    await resolve(token, {"approvals": {"r1": False}})
    raw = await handle.result(timeout=30)
    assert refunds == []
    assert raw["output"].startswith("final: ") and "denied" in raw["output"].lower()


async def test_a_failed_wait_denies_and_an_answer_from_a_client_works(app: Perdure, db_url: str) -> None:
    handle = await approving.start("refund me", workflow_id="refund-3")
    token = await _wait_for_token()
    async with Client(db_url) as client:
        await fail(token, "nobody was around", client=client)
    raw = await handle.result(timeout=30)
    assert refunds == [] and "nobody was around" in raw["output"]


async def test_replaying_a_finished_approval_does_not_ask_again(app: Perdure) -> None:
    handle = await approving.start("refund me", workflow_id="refund-4")
    await resolve(await _wait_for_token(), {"approvals": {"r1": True}})
    await handle.result(timeout=30)
    forked = await app.fork("refund-4", from_step=5)  # past the wait and the tool: all replayed
    assert (await forked.result(timeout=30))["output"] == "final: refunded 30"
    assert len(asked) == 1 and refunds == [30]


impatient = DurableAgent(
    Agent(
        FunctionModel(script),
        name="impatient",
        tools=[Tool(refund, requires_approval=True)],
        capabilities=[RequestInput(ask=hand_out, name="approve_refund", timeout=timedelta(seconds=0.2))],
    )
)


async def test_a_wait_that_times_out_denies_the_call(app: Perdure) -> None:
    raw = await impatient.run("refund me", workflow_id="refund-timeout")
    assert refunds == []
    assert "No decision on this tool call arrived" in raw.output


async def confirm(amount: int) -> str:
    """Asks a human inside the run; no answer within the timeout is an error the run ends with."""
    answer = await wait_for_external_event(
        "confirm", ask=lambda token: asked.append(token), timeout=timedelta(seconds=0.2)
    )
    return f"confirmed {answer}"


def confirm_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("confirm", {"amount": 5}, tool_call_id="c1")])
    return ModelResponse(parts=[TextPart("done")])


confirming = DurableAgent(
    Agent(FunctionModel(confirm_script), name="confirming", tools=[Tool(confirm, metadata={"perdure": False})])
)


async def test_a_wait_for_an_external_event_that_times_out_raises_external_event_error(app: Perdure) -> None:
    with pytest.raises(ExternalEventError, match=r"no answer to 'confirm' within 0:00:00\.2"):
        await confirming.run("go", workflow_id="confirm-timeout")
    assert len(asked) == 1
    assert (await app.get_workflow("confirm-timeout")).status == WorkflowStatus.ERROR
