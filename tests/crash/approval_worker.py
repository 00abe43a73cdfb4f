"""A child process running an agent whose refund tool needs a human's approval.

Usage: python approval_worker.py DB_URL WORKDIR (start|recover)
`ask` appends the resume token to WORKDIR/asked.log; the tool appends to WORKDIR/refunds.log.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, RunContext, Tool

from perdure import Perdure
from perdure.pydantic_ai import DurableAgent

DB_URL, WORKDIR, MODE = sys.argv[1:4]
DIR = Path(WORKDIR)


def refund(amount: int) -> str:
    with open(DIR / "refunds.log", "a") as f:
        f.write(f"{amount}\n")
    return f"refunded {amount}"


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 30}, tool_call_id="r1")])
    return ModelResponse(parts=[TextPart(str(returns[-1].content))])


def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> None:
    with open(DIR / "asked.log", "a") as f:
        f.write(token + "\n")


support = DurableAgent(
    Agent(
        FunctionModel(script),
        name="support",
        tools=[Tool(refund, requires_approval=True)],
        capabilities=[RequestInput(ask=ask, name="approve_refund")],
    )
)


async def main() -> None:
    async with Perdure(DB_URL, maintenance_interval=0.05) as app:
        if MODE == "start":
            handle = await support.start("refund please", workflow_id="approval-1")
        else:
            handle = await app.retrieve("approval-1")
        raw = await handle.result(timeout=60)
    print(json.dumps({"output": raw["output"]}))


asyncio.run(main())
