"""A small web app around a durable support agent: start runs, follow them over SSE, approve refunds.

    pip install 'perdure[pydantic-ai]' starlette uvicorn
    python examples/support_app.py              # serves on http://127.0.0.1:8000
    python examples/support_app.py --self-test  # starts the server, plays a customer and a reviewer

Routes:
    POST /runs?prompt=...            start a run, returns {"workflow_id": ...}
    GET  /runs/{id}/events           the run's events as server-sent events (resumes with Last-Event-ID)
    GET  /runs/{id}/approval         the refund waiting for a decision, if any
    POST /runs/{id}/approval?ok=yes  approve (or ok=no: deny) it

The agent's model is scripted (offline) unless PERDURE_EXAMPLE_MODEL names a real one. Kill the server
while a refund waits for approval and start it again: the run is still waiting, and approving it then
continues it; the refund is never executed twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, RunContext, Tool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import perdure
from perdure import Perdure
from perdure.pydantic_ai import DurableAgent, resolve


def refund(amount: int) -> str:
    """Pay the customer back (needs a human's approval)."""
    return f"refunded ${amount}"


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 30})])
    return ModelResponse(parts=[TextPart(f"Done: {returns[-1].content}.")])


async def scripted_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """The same script, streamed (the app streams every event of a run to its clients)."""
    returns = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returns:
        yield {0: DeltaToolCall(name="refund", json_args='{"amount": 30}')}
        return
    for word in f"Done: {returns[-1].content}.".split(" "):
        yield word + " "


async def ask_reviewer(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> None:
    # Published as an event of the run, so any process (this app, or another) can find and answer it.
    calls = [{"id": c.tool_call_id, "tool": c.tool_name, "args": c.args_as_dict()} for c in requests.approvals]
    await perdure.set_event("approval", {"token": token, "calls": calls})


model = os.environ.get("PERDURE_EXAMPLE_MODEL") or FunctionModel(scripted, stream_function=scripted_stream)
support = DurableAgent(
    Agent(
        model,
        instructions="You help customers. Refund them when they ask.",
        name="support",
        tools=[Tool(refund, requires_approval=True)],
        capabilities=[RequestInput(ask=ask_reviewer, name="approve_refund")],
    ),
    stream_events=True,
)


async def start_run(request: Request) -> JSONResponse:
    handle = await support.start(request.query_params.get("prompt", "I want a refund"))
    return JSONResponse({"workflow_id": handle.workflow_id})


async def events(request: Request) -> StreamingResponse:
    run_id = request.path_params["run_id"]
    start = int(request.headers.get("last-event-id", "-1")) + 1

    async def stream() -> Any:
        offset = start
        async for event in perdure.read_stream(run_id, "events", offset):
            yield f"id: {offset}\ndata: {json.dumps(event)}\n\n"
            offset += 1

    return StreamingResponse(stream(), media_type="text/event-stream")


async def approval(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    pending = await perdure.get_event(run_id, "approval", timeout=0)
    if request.method == "GET":
        return JSONResponse(pending)
    if pending is None:
        return JSONResponse({"error": "nothing waits for approval"}, status_code=409)
    ok = request.query_params.get("ok", "no") == "yes"
    await resolve(pending["token"], {"approvals": {call["id"]: ok for call in pending["calls"]}})
    return JSONResponse({"approved": ok})


app = Starlette(
    routes=[
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs/{run_id}/events", events),
        Route("/runs/{run_id}/approval", approval, methods=["GET", "POST"]),
    ]
)


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _http(method: str, url: str) -> Any:
    with _LOCAL.open(urllib.request.Request(url, method=method), timeout=30) as response:
        body = response.read().decode()
    return body if "text/event-stream" in response.headers.get("content-type", "") else json.loads(body)


async def self_test(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    run_id = (await asyncio.to_thread(_http, "POST", f"{base}/runs?prompt=refund"))["workflow_id"]
    pending = None
    while pending is None:  # the reviewer's inbox
        pending = await asyncio.to_thread(_http, "GET", f"{base}/runs/{run_id}/approval")
        await asyncio.sleep(0.05)
    print("waiting for approval:", [call["tool"] for call in pending["calls"]])
    print(await asyncio.to_thread(_http, "POST", f"{base}/runs/{run_id}/approval?ok=yes"))
    sse = await asyncio.to_thread(_http, "GET", f"{base}/runs/{run_id}/events")
    last = json.loads(sse.strip().splitlines()[-1].removeprefix("data: "))
    print("answer:", last["output"].strip())


async def main(test: bool) -> None:
    async with Perdure(os.environ.get("PERDURE_DATABASE_URL", "sqlite:///perdure.sqlite")):
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0 if test else 8000, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        if test:
            while not server.started:
                await asyncio.sleep(0.01)
            await self_test(server.servers[0].sockets[0].getsockname()[1])
            server.should_exit = True
        await serving


if __name__ == "__main__":
    asyncio.run(main("--self-test" in sys.argv))
