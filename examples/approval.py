"""Human approval across processes: a run asks for approval, its process goes away, and another process
decides later (days later, if need be). The run continues where it stopped; the refund runs once.

    pip install 'perdure[pydantic-ai]'
    python examples/approval.py request "I was charged twice"   # starts run refund-1; it waits; exit
    python examples/approval.py pending                          # what waits for a decision
    python examples/approval.py approve refund-1                 # or: deny refund-1

`request` starts the run and returns once the run has handed out its approval request (to
./approvals.json, standing in for Slack or a review UI); the run then waits in the database, not in
a process. `approve` launches the runtime again, which recovers the waiting run without asking a
second time, answers the request, and prints the run's outcome. The model is scripted (offline).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, RunContext, Tool

from perdure import Perdure
from perdure.pydantic_ai import DurableAgent, resolve

DATABASE = "sqlite:///perdure.sqlite"
REQUESTS = Path("approvals.json")  # workflow id -> {"token": ..., "calls": [...]}
REFUNDS = Path("refunds.log")  # one line per refund that really ran

handed_out = asyncio.Event()


def refund(amount: int) -> str:
    """Refund the customer (needs a human's approval)."""
    with REFUNDS.open("a") as log:
        log.write(f"{amount}\n")
    return f"refunded {amount} EUR"


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A scripted support model: ask for a refund, then tell the customer what came of it."""
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 30}, tool_call_id="refund-call")])
    return ModelResponse(parts=[TextPart(f"Outcome: {returns[-1].content}")])


async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> None:
    """Hand the approval request out and return None: the answer comes later, from anywhere."""
    waiting = json.loads(REQUESTS.read_text()) if REQUESTS.exists() else {}
    workflow_id = token.rpartition("/")[0]  # perdure's resume tokens start with the run's workflow id
    calls = [{"id": c.tool_call_id, "tool": c.tool_name, "args": c.args_as_dict()} for c in requests.approvals]
    waiting[workflow_id] = {"token": token, "calls": calls}
    REQUESTS.write_text(json.dumps(waiting, indent=2))
    handed_out.set()


support = DurableAgent(
    Agent(
        FunctionModel(model),
        name="support",
        tools=[Tool(refund, requires_approval=True)],
        capabilities=[RequestInput(ask=ask, name="approve_refund")],
    )
)


async def request(prompt: str, workflow_id: str) -> None:
    async with Perdure(DATABASE):
        await support.start(prompt, workflow_id=workflow_id)
        await handed_out.wait()
        print(f"run {workflow_id} waits for approval: python examples/approval.py approve {workflow_id}")
    # Leaving the block stops this process's runtime; the run stays in the database, waiting.


async def decide(workflow_id: str, approved: bool) -> None:
    waiting: dict[str, Any] = json.loads(REQUESTS.read_text()) if REQUESTS.exists() else {}
    if workflow_id not in waiting:
        sys.exit(f"no approval request from run {workflow_id!r} (see: python examples/approval.py pending)")
    entry = waiting[workflow_id]
    async with Perdure(DATABASE) as app:  # launching recovers the waiting run; it does not ask again
        await resolve(entry["token"], {"approvals": {call["id"]: approved for call in entry["calls"]}})
        outcome = await (await app.retrieve(workflow_id)).result(timeout=60)
        print(outcome["output"])
    del waiting[workflow_id]
    REQUESTS.write_text(json.dumps(waiting, indent=2))


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "request":
        asyncio.run(request(argv[1], argv[2] if len(argv) > 2 else "refund-1"))
    elif argv == ["pending"]:
        for workflow_id, entry in (json.loads(REQUESTS.read_text()) if REQUESTS.exists() else {}).items():
            print(workflow_id, json.dumps(entry["calls"]))
    elif len(argv) == 2 and argv[0] in ("approve", "deny"):
        asyncio.run(decide(argv[1], approved=argv[0] == "approve"))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
