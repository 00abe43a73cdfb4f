"""The two agents of scenario (e), defined once and built the same way for every system.

- ``geo``: the seed's agent, ``Agent(TestModel(), instructions="You're an expert in geography.",
  name="geography")``. One model request, no tools.
- ``trip``: a scripted ``FunctionModel`` that calls one tool per turn, three turns in a row (each tool
  returns, then the model calls the next), and then answers with what the tools said: 4 model requests
  and 3 tool calls per run.

The model function and the tools are ``async`` so no run hops to a thread: the time measured is the
agent loop and the durability, not the executor. Imported only by the agent children (pydantic-ai is a
heavy import and the other scenarios do not need it).
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import Tool

GEO_INSTRUCTIONS = "You're an expert in geography."


async def get_country(city: str) -> str:
    """The country a city is in."""
    return "Mexico"


async def get_capital(country: str) -> str:
    """The capital of a country."""
    return "Mexico City"


async def get_population(city: str) -> int:
    """The population of a city."""
    return 9_209_944


TRIP_CALLS = [
    ("get_country", {"city": "Guadalajara"}),
    ("get_capital", {"country": "Mexico"}),
    ("get_population", {"city": "Mexico City"}),
]


async def trip_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """One tool call per turn until all three have returned, then the answer built from their returns."""
    returns = [p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if len(returns) < len(TRIP_CALLS):
        name, args = TRIP_CALLS[len(returns)]
        return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=f"call-{len(returns)}")])
    country, capital, population = returns
    return ModelResponse(parts=[TextPart(f"{capital}, capital of {country}, has {population:,} people.")])


AGENTS: dict[str, dict[str, Any]] = {
    "geo": {
        "name": "geography",
        "prompt": "What is the capital of Mexico?",
        "expected": "success (no tool calls)",  # TestModel's text when the agent has no tools
    },
    "trip": {
        "name": "trip",
        "prompt": "How many people live in the capital of the country Guadalajara is in?",
        "expected": "Mexico City, capital of Mexico, has 9,209,944 people.",
    },
}


def build(kind: str, capabilities: list[Any] | None = None, *, inline_tools: bool = False) -> Agent[None, str]:
    """A fresh plain agent of this kind, with the given capabilities (none: plain pydantic-ai).

    `inline_tools`: mark every tool `{"perdure": False}` so perdure runs it in the workflow without a
    checkpoint, as DBOS does with plain function tools (the other systems ignore the metadata).
    """
    caps = list(capabilities or [])
    tools = [get_country, get_capital, get_population]
    meta = {"perdure": False} if inline_tools else None
    if kind == "geo":
        return Agent(TestModel(), instructions=GEO_INSTRUCTIONS, name="geography", capabilities=caps)
    if kind == "trip":
        return Agent(
            FunctionModel(trip_model),
            name="trip",
            tools=[Tool(t, metadata=meta) for t in tools],
            capabilities=caps,
        )
    raise ValueError(f"unknown agent {kind!r}")
