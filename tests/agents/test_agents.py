"""Durable Pydantic AI agents on both stores: step names, replay, forks, limits and refusals."""

from __future__ import annotations

import pytest
from pydantic_ai import Agent, ModelRetry, UsageLimitExceeded
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import RunContext, Tool
from pydantic_ai.toolsets import FunctionToolset
from pydantic_ai.usage import UsageLimits

import perdure
from perdure import ConfigurationError, NonDeterminismError, Perdure, SerializationError, workflow
from perdure.pydantic_ai import DurableAgent, PerdureDurability, model_response

model_calls: list[int] = []
tool_calls: list[str] = []


def geography_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls one tool, then answers with what the tool said."""
    model_calls.append(len(messages))
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("get_capital", {"country": "Mexico"}, tool_call_id="c1")])
    return ModelResponse(parts=[TextPart(f"The capital is {messages[-1].parts[0].content}.")])  # type: ignore[union-attr]


def get_capital(country: str) -> str:
    tool_calls.append(country)
    return "Mexico City"


geography = Agent(FunctionModel(geography_script), name="geography", tools=[get_capital])
durable_geography = DurableAgent(geography)

capability_agent = Agent(
    FunctionModel(geography_script), name="geo_capability", tools=[get_capital], capabilities=[PerdureDurability()]
)


@workflow(name="agents.answer")
async def answer(question: str) -> str:
    return (await capability_agent.run(question)).output


def inline_tool(country: str) -> str:
    tool_calls.append(f"inline:{country}")
    return "Mexico City"


def inline_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("inline_tool", {"country": "Peru"}, tool_call_id="c1")])
    return ModelResponse(parts=[TextPart("done")])


inline_agent = DurableAgent(
    Agent(FunctionModel(inline_script), name="inline", tools=[Tool(inline_tool, metadata={"perdure": False})])
)

retry_once: list[int] = []


def flaky_tool(n: int) -> int:
    retry_once.append(n)
    if len(retry_once) == 1:
        raise ModelRetry("try again")
    return n * 2


def flaky_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    last = messages[-1].parts[-1]
    if getattr(last, "part_kind", "") in ("tool-return",):
        return ModelResponse(parts=[TextPart(f"got {last.content}")])  # type: ignore[union-attr]
    return ModelResponse(parts=[ToolCallPart("flaky_tool", {"n": 21})])


flaky_agent = DurableAgent(Agent(FunctionModel(flaky_script), name="flaky", tools=[flaky_tool]))

# Multi-agent: a tool of the outer agent runs the inner durable agent.
inner = DurableAgent(Agent(TestModel(custom_output_text="inner says hi"), name="inner"))


async def ask_inner(ctx: RunContext[None], question: str) -> str:
    return (await inner.run(question, usage=ctx.usage)).output


def outer_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("ask_inner", {"question": "hello?"}, tool_call_id="c1")])
    return ModelResponse(parts=[TextPart(f"outer heard: {messages[-1].parts[0].content}")])  # type: ignore[union-attr]


outer = DurableAgent(Agent(FunctionModel(outer_script), name="outer", tools=[ask_inner]))

# Renaming an agent between record and replay must be caught.
renamed: dict[str, Agent[None, str]] = {
    "v1": Agent(TestModel(), name="geo_v1", capabilities=[PerdureDurability()]),
    "v2": Agent(TestModel(), name="geo_v2", capabilities=[PerdureDurability()]),
}
current_version = ["v1"]


@workflow(name="agents.versioned")
async def versioned(question: str) -> str:
    return (await renamed[current_version[0]].run(question)).output


def toolset_version(toolset_id: str) -> Agent[None, str]:
    return Agent(
        FunctionModel(geography_script),
        name="geo_toolsets",
        toolsets=[FunctionToolset([get_capital], id=toolset_id)],
        capabilities=[PerdureDurability()],
    )


retoolset: dict[str, Agent[None, str]] = {"v1": toolset_version("capitals"), "v2": toolset_version("capitals_v2")}


@workflow(name="agents.toolset_versioned")
async def toolset_versioned(question: str) -> str:
    return (await retoolset[current_version[0]].run(question)).output


@pytest.fixture(autouse=True)
def _reset() -> None:
    model_calls.clear()
    tool_calls.clear()
    retry_once.clear()
    current_version[0] = "v1"


EXPECTED_STEPS = [
    "geography__model.request",
    "geography__function_toolset__<agent>.call_tool:get_capital",
    "geography__model.request",
]


async def test_persisted_step_names_are_pinned(app: Perdure) -> None:
    result = await durable_geography.run("What is the capital of Mexico?", workflow_id="geo-1")
    assert result.output == "The capital is Mexico City."
    assert [s.name for s in await app.list_steps("geo-1")] == EXPECTED_STEPS
    kinds = [m.kind for m in result.all_messages()]
    assert kinds == ["request", "response", "request", "response"]
    assert result.new_messages() == result.all_messages()  # no history was given
    info = await app.get_workflow("geo-1")
    assert info.name == "geography.run"


async def test_capability_style_records_the_same_steps(app: Perdure) -> None:
    handle = await app.start(answer, "capital?", workflow_id="cap-1")
    assert await handle.result() == "The capital is Mexico City."
    names = [s.name for s in await app.list_steps("cap-1")]
    assert names == [n.replace("geography", "geo_capability") for n in EXPECTED_STEPS]


async def test_same_workflow_id_twice_runs_once(app: Perdure) -> None:
    first = await durable_geography.run("capital?", workflow_id="geo-twice")
    second = await durable_geography.run("capital?", workflow_id="geo-twice")
    assert first.output == second.output
    assert first.usage == second.usage and first.usage.requests == 2
    assert model_calls == [1, 3] and tool_calls == ["Mexico"]


async def test_outside_a_workflow_the_agent_is_plain(app: Perdure) -> None:
    plain = Agent(FunctionModel(geography_script), tools=[get_capital])
    expected = await plain.run("capital?")
    got = await capability_agent.run("capital?")
    assert got.output == expected.output
    assert len(got.all_messages()) == len(expected.all_messages())
    assert (await app.list_workflows()) == []  # nothing was recorded


async def test_fork_from_a_model_turn_reuses_earlier_tool_results(app: Perdure) -> None:
    await durable_geography.run("capital?", workflow_id="geo-fork")
    assert tool_calls == ["Mexico"] and len(model_calls) == 2
    forked = await app.fork("geo-fork", from_step=2)
    raw = await forked.result()
    assert raw["output"] == "The capital is Mexico City."
    assert tool_calls == ["Mexico"]  # the tool's checkpoint was reused
    assert len(model_calls) == 3  # only the last model turn ran again
    assert (await app.get_workflow(forked.workflow_id)).forked_from == "geo-fork"


async def test_usage_limit_raises_the_original_error(app: Perdure) -> None:
    with pytest.raises(UsageLimitExceeded):
        await durable_geography.run("capital?", workflow_id="geo-limit", usage_limits=UsageLimits(request_limit=1))
    assert (await app.get_workflow("geo-limit")).status == perdure.WorkflowStatus.ERROR
    assert tool_calls == ["Mexico"] and len(model_calls) == 1


async def test_unregistered_model_instance_is_refused(app: Perdure) -> None:
    with pytest.raises(UserError, match="not registered"):
        await durable_geography.run("x", model=TestModel())
    assert await app.list_workflows() == []


async def test_toolset_added_at_run_time_is_refused(app: Perdure) -> None:
    @workflow(name="agents.runtime_toolset")
    async def with_extra_toolset() -> str:
        return (await capability_agent.run("x", toolsets=[FunctionToolset([inline_tool])])).output

    with pytest.raises(UserError):
        await with_extra_toolset()


async def test_tool_opted_out_runs_inline(app: Perdure) -> None:
    result = await inline_agent.run("go", workflow_id="inline-1")
    assert result.output == "done"
    assert tool_calls == ["inline:Peru"]
    assert [s.name for s in await app.list_steps("inline-1")] == ["inline__model.request", "inline__model.request"]


async def test_model_retry_crosses_the_step_unchanged_and_is_not_retried(app: Perdure) -> None:
    plain = await Agent(FunctionModel(flaky_script), tools=[flaky_tool]).run("go")
    retry_once.clear()
    result = await flaky_agent.run("go", workflow_id="flaky-1")
    assert result.output == plain.output
    tool_steps = [s for s in await app.list_steps("flaky-1") if "call_tool" in s.name]
    # ModelRetry was recorded as the tool's outcome (a value the model sees), in one attempt:
    # the engine did not retry it as a failure.
    assert len(tool_steps) == 1 and tool_steps[0].attempts == 1
    assert tool_steps[0].output is not None and '"model_retry"' in tool_steps[0].output
    assert retry_once == [21]


async def test_agent_calling_an_agent_in_a_tool_runs_it_as_a_child_workflow(app: Perdure) -> None:
    result = await outer.run("go", workflow_id="outer-1")
    assert result.output == "outer heard: inner says hi"
    children = await app.list_workflows(parent_id="outer-1")
    assert [c.name for c in children] == ["inner.run"]
    assert children[0].workflow_id == "outer-1-1.1"  # the tool's step position, first child
    # The delegate's request counts in the outer run's usage, also when the tool's checkpoint is replayed.
    assert result.usage.requests == 3
    forked = await app.fork("outer-1", from_step=2)
    assert (await forked.result())["usage"]["requests"] == 3
    assert len(await app.list_workflows(name="inner.run")) == 1  # the delegate did not run again


async def test_renaming_the_agent_is_detected_on_replay(app: Perdure) -> None:
    handle = await app.start(versioned, "q", workflow_id="ver-1")
    await handle.result()
    before = [(s.step_id, s.name) for s in await app.list_steps("ver-1")]
    current_version[0] = "v2"
    forked = await app.fork("ver-1", from_step=1)
    with pytest.raises(NonDeterminismError, match=r"geo_v1__model\.request"):
        await forked.result()
    assert [(s.step_id, s.name) for s in await app.list_steps("ver-1")] == before


async def test_changing_a_toolset_id_is_detected_on_replay(app: Perdure) -> None:
    handle = await app.start(toolset_versioned, "q", workflow_id="tver-1")
    assert await handle.result() == "The capital is Mexico City."
    before = [(s.step_id, s.name) for s in await app.list_steps("tver-1")]
    assert before[1] == (1, "geo_toolsets__function_toolset__capitals.call_tool:get_capital")
    current_version[0] = "v2"
    forked = await app.fork("tver-1", from_step=2)  # replays the tool call under its new toolset id
    with pytest.raises(NonDeterminismError, match=r"function_toolset__capitals\.call_tool"):
        await forked.result()
    assert [(s.step_id, s.name) for s in await app.list_steps("tver-1")] == before
    assert tool_calls == ["Mexico"]  # the replay ran nothing


async def test_each_model_step_holds_its_response_and_usage(app: Perdure) -> None:
    result = await durable_geography.run("capital?", workflow_id="geo-usage")
    responses = [model_response(s) for s in await app.list_steps("geo-usage")]
    assert [r is not None for r in responses] == [True, False, True]  # the tool step is not a model step
    models = [r for r in responses if r is not None]
    assert isinstance(models[0].parts[0], ToolCallPart) and models[0].parts[0].tool_name == "get_capital"
    assert sum(r.usage.input_tokens for r in models) == result.usage.input_tokens > 0
    assert sum(r.usage.output_tokens for r in models) == result.usage.output_tokens > 0


def test_agent_without_a_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unique name"):
        DurableAgent(Agent(TestModel()))


def test_duplicate_agent_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="two durable agents"):
        DurableAgent(Agent(TestModel(), name="geography"))


async def test_agent_defined_after_launch_is_refused(app: Perdure) -> None:
    with pytest.raises(ConfigurationError, match="after the perdure runtime launched"):
        DurableAgent(Agent(TestModel(), name="too_late"))


class Opaque:
    """Not JSON: no checkpoint can hold it."""


opaque_calls: list[int] = []


def opaque_tool(n: int) -> object:
    opaque_calls.append(n)
    return Opaque()


def opaque_script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("opaque_tool", {"n": 1}, tool_call_id="o1")])
    return ModelResponse(parts=[TextPart("unreachable")])


opaque_agent = DurableAgent(
    Agent(FunctionModel(opaque_script), name="opaque", tools=[opaque_tool]),
    tool_steps={"max_attempts": 3, "retry_interval": 0.01},  # retryable errors would run it 3 times
)


async def test_a_result_that_cannot_be_checkpointed_ends_the_run_clearly_without_retrying(app: Perdure) -> None:
    opaque_calls.clear()
    with pytest.raises(SerializationError, match="cannot be stored as JSON"):
        await opaque_agent.run("go", workflow_id="opaque-1")
    assert opaque_calls == [1]  # ran once: a serialization failure is not retried
    assert (await app.get_workflow("opaque-1")).status == perdure.WorkflowStatus.ERROR
