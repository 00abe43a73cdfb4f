"""A child process running a durable agent that may SIGKILL itself at a chosen point.

Usage: python agent_worker.py DB_URL SCENARIO WORKFLOW_ID WORKDIR (start|recover)
Every model call and tool call appends a line to WORKDIR/effects.log. A crash point fires once, when
the file WORKDIR/crash-<point> exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import Client, Perdure
from perdure.pydantic_ai import DurableAgent

DB_URL, SCENARIO, WORKFLOW_ID, WORKDIR, MODE = sys.argv[1:6]
DIR = Path(WORKDIR)


def effect(name: str) -> None:
    with open(DIR / "effects.log", "a") as f:
        f.write(name + "\n")


def crash_point(point: str) -> None:
    marker = DIR / f"crash-{point}"
    if marker.exists():
        marker.unlink()
        os.kill(os.getpid(), signal.SIGKILL)


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(1 for m in messages if m.kind == "request")
    effect(f"model-{turn}")
    if turn == 1:
        calls = [ToolCallPart("tool_a", {"x": 1}, tool_call_id="a")]
        if SCENARIO == "parallel":
            calls.append(ToolCallPart("tool_b", {"x": 2}, tool_call_id="b"))
        return ModelResponse(parts=calls)
    crash_point("model-2")
    returns = sorted(p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart))
    return ModelResponse(parts=[TextPart("answer: " + ",".join(str(r) for r in returns))])


async def tool_a(x: int) -> int:
    effect("tool_a")
    crash_point("tool-a")
    return x * 10


async def tool_b(x: int) -> int:
    effect("tool_b")
    if (DIR / "crash-tool-b").exists():
        # Die only once tool_a's checkpoint is in the database: a crash in the middle of a parallel batch.
        async with Client(DB_URL) as client:
            while not any("tool_a" in s.name for s in await client.list_steps(WORKFLOW_ID)):
                await asyncio.sleep(0.005)
        crash_point("tool-b")
    return x * 10


durable = DurableAgent(Agent(FunctionModel(script), name="crashy", tools=[tool_a, tool_b]))


async def main() -> None:
    async with Perdure(DB_URL, maintenance_interval=0.05) as app:
        if MODE == "start":
            handle = await durable.start("go", workflow_id=WORKFLOW_ID)
        else:
            handle = await app.retrieve(WORKFLOW_ID)
        raw = await handle.result(timeout=60)
    print(json.dumps({"output": raw["output"], "requests": raw["usage"]["requests"]}))


asyncio.run(main())
