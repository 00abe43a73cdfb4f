"""MCP toolsets in durable runs, against a real MCP server process (stdio): discovery, instructions and
calls are named steps, replay does not call the server again, and an MCP toolset added at run time is
refused."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from fastmcp.client import Client as MCPClient
from fastmcp.client.transports import PythonStdioTransport
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from perdure import Perdure, workflow
from perdure.pydantic_ai import DurableAgent, PerdureDurability

CALLS = Path(tempfile.mkdtemp(prefix="perdure-mcp-")) / "calls.log"
SERVER = Path(__file__).with_name("mcp_geo_server.py")


def geo_toolset(toolset_id: str = "geo") -> MCPToolset[None]:
    transport = PythonStdioTransport(SERVER, env={"PERDURE_MCP_CALLS": str(CALLS)}, python_cmd=sys.executable)
    return MCPToolset(MCPClient(transport), id=toolset_id, include_instructions=True)


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returns:
        assert [t.name for t in info.function_tools] == ["capital"]  # discovered from the server
        return ModelResponse(parts=[ToolCallPart("capital", {"country": "Mexico"}, tool_call_id="m1")])
    return ModelResponse(parts=[TextPart(f"The capital is {returns[0]}.")])


durable_mcp = DurableAgent(Agent(FunctionModel(script), name="mcp_geo", toolsets=[geo_toolset()]))
plain_mcp = Agent(FunctionModel(script), name="mcp_plain", capabilities=[PerdureDurability()])


@workflow(name="mcp.added_at_run_time")
async def added_at_run_time() -> str:
    return (await plain_mcp.run("capital?", toolsets=[geo_toolset("late")])).output


def calls() -> list[str]:
    return CALLS.read_text().splitlines() if CALLS.exists() else []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.unlink(missing_ok=True)


async def test_mcp_discovery_and_calls_are_named_steps_and_replay_does_not_call_again(app: Perdure) -> None:
    result = await durable_mcp.run("What is the capital of Mexico?", workflow_id="mcp-1")
    assert result.output == "The capital is Mexico City."
    assert calls() == ["Mexico"]
    names = [s.name for s in await app.list_steps("mcp-1")]
    assert names == PINNED_MCP_STEPS
    again = await durable_mcp.run("What is the capital of Mexico?", workflow_id="mcp-1")
    assert again.output == result.output and calls() == ["Mexico"]
    # A fork from the last model turn replays the discovery and the call from their checkpoints.
    last_turn = len(names) - 1
    assert names[last_turn] == "mcp_geo__model.request"
    fork = await app.fork("mcp-1", from_step=last_turn)
    assert (await fork.result(timeout=60))["output"] == result.output
    assert calls() == ["Mexico"]
    # From the first turn instead, the call runs again: the checkpoints above were what held it back.
    refork = await app.fork("mcp-1", from_step=names.index("mcp_geo__model.request"))
    assert (await refork.result(timeout=60))["output"] == result.output
    assert calls() == ["Mexico", "Mexico"]


async def test_an_mcp_toolset_added_at_run_time_is_refused(app: Perdure) -> None:
    with pytest.raises(UserError, match="MCPToolset 'late' cannot be added at runtime with perdure"):
        await added_at_run_time()
    assert calls() == []


PINNED_MCP_STEPS = [
    "mcp_geo__mcp_server__geo.get_tools",  # discovery, once per run
    "mcp_geo__mcp_server__geo.get_instructions",  # the server's instructions, before each model request
    "mcp_geo__model.request",
    "mcp_geo__mcp_server__geo.call_tool",
    "mcp_geo__mcp_server__geo.get_instructions",
    "mcp_geo__model.request",
]
