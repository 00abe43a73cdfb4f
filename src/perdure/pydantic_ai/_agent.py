"""`DurableAgent(agent)`: the seed's shape. Each run is a perdure workflow named `{agent name}.run`."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic

from pydantic import TypeAdapter
from pydantic_ai import Agent
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, UserContent
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT
from pydantic_ai.run import AgentRun
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import AgentDepsT
from pydantic_ai.usage import RunUsage, UsageLimits

from .. import _context
from .. import runtime as _runtime
from .._management import WorkflowHandle
from ..errors import ConfigurationError
from ..messaging import close_stream, write_stream
from ..runtime import active_runtime
from ..workflows import workflow, workflow_def_of
from ._durability import PerdureDurability, StepConfig
from ._stream import EVENTS_STREAM, RESULT_EVENT_KIND, DurableRunEvents, DurableStreamedRun

_AGENT_NAMES: dict[str, weakref.ReferenceType[Any]] = {}
_USAGE = TypeAdapter(RunUsage)
_LIMITS = TypeAdapter(UsageLimits | None)


@dataclass
class DurableRunResult(Generic[OutputDataT]):
    """The outcome of a durable agent run, rebuilt from its checkpoint (the same in any process)."""

    output: OutputDataT
    workflow_id: str
    _raw_messages: Any = field(repr=False)
    _new_from: int = field(repr=False)
    _usage: RunUsage = field(repr=False)
    _messages: list[ModelMessage] | None = field(default=None, repr=False)

    def _decoded(self) -> list[ModelMessage]:
        # Decoded on first use: a caller that only reads `output` does not pay for the whole history.
        if self._messages is None:
            self._messages = ModelMessagesTypeAdapter.validate_python(self._raw_messages)
        return self._messages

    def all_messages(self) -> list[ModelMessage]:
        return list(self._decoded())

    def new_messages(self) -> list[ModelMessage]:
        return self._decoded()[self._new_from :]

    @property
    def usage(self) -> RunUsage:
        return self._usage


class DurableAgent(Generic[AgentDepsT, OutputDataT]):
    """Run a Pydantic AI agent durably: its loop is a workflow, its model and tool calls are steps.

    ```python
    # not run
    durable = DurableAgent(Agent("openai:gpt-5", instructions="...", name="geography"))
    async with Perdure("sqlite:///perdure.sqlite"):
        result = await durable.run("What is the capital of Mexico?")
    ```

    Define it at import time, before the runtime launches, so recovery finds its workflow.
    Arguments, deps and output must be JSON-serializable (pydantic types are fine).
    """

    def __init__(
        self,
        agent: AbstractAgent[AgentDepsT, OutputDataT],
        *,
        name: str | None = None,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        model_step: StepConfig | None = None,
        tool_steps: StepConfig | None = None,
        mcp_steps: StepConfig | None = None,
        event_steps: StepConfig | None = None,
        max_recovery_attempts: int | None = None,
        stream_events: bool = False,
    ) -> None:
        """`stream_events=True` writes every event of each run to its durable stream `"events"`, ending
        with `{"event_kind": "perdure_result", "output": ...}`; follow it with `read_stream(id, "events")`."""
        agent_name = name or agent.name
        if not agent_name:
            raise ConfigurationError(
                "a durable agent needs a unique name: Agent(..., name='...') or DurableAgent(agent, name='...'); "
                "it names the agent's workflow and steps in the database"
            )
        existing = _AGENT_NAMES.get(agent_name)
        if existing is not None and existing() is not None:
            raise ConfigurationError(f"two durable agents are named {agent_name!r}; agent names must be unique")
        runtime = _runtime._active
        if runtime is not None and runtime.launched:
            raise ConfigurationError(
                f"DurableAgent {agent_name!r} was created after the perdure runtime launched: recovery at launch "
                "could not have found its unfinished runs. Create durable agents at import time, before launch."
            )
        if not isinstance(agent, Agent):
            raise ConfigurationError(f"DurableAgent needs a pydantic_ai.Agent, got {type(agent).__name__}")
        self.name = agent_name
        self.agent: Agent[AgentDepsT, OutputDataT] = agent

        def capability(streaming: bool) -> PerdureDurability[AgentDepsT]:
            return PerdureDurability(
                name=agent_name,
                models=models,
                event_stream_handler=event_stream_handler,
                model_step=model_step,
                tool_steps=tool_steps,
                mcp_steps=mcp_steps,
                event_steps=event_steps,
                stream_events=streaming,
            )

        self.capability: PerdureDurability[AgentDepsT] = capability(stream_events)
        # Runs followed with run_stream_events() write their events even when the agent's other runs
        # do not (an event handler makes every model request a streamed one, so it is per run).
        self._streaming_capability = self.capability if stream_events else capability(True)
        self.stream_events = stream_events
        self._output = TypeAdapter(agent.output_type) if isinstance(agent.output_type, type) else TypeAdapter(Any)
        deps_type = agent.deps_type if agent.deps_type is not type(None) else Any
        self._deps: TypeAdapter[Any] = TypeAdapter(deps_type)
        self.workflow = self._register(max_recovery_attempts)
        _AGENT_NAMES[agent_name] = weakref.ref(self)

    def _register(self, max_recovery_attempts: int | None) -> Any:
        durable = self

        async def run_agent(
            user_prompt: str | Sequence[UserContent] | None = None,
            message_history: list[ModelMessage] | None = None,
            deps: Any = None,
            model: str | None = None,
            model_settings: dict[str, Any] | None = None,
            usage_limits: dict[str, Any] | None = None,
            stream_events: bool = False,
        ) -> dict[str, Any]:
            history = list(message_history or [])
            streaming = durable.stream_events or stream_events
            result = await durable.agent.run(  # type: ignore[misc]
                user_prompt,
                message_history=history or None,
                deps=durable._deps.validate_python(deps) if deps is not None else None,  # type: ignore[arg-type]
                model=model,
                model_settings=ModelSettings(**model_settings) if model_settings else None,  # type: ignore[typeddict-item]
                usage_limits=_LIMITS.validate_python(usage_limits) if usage_limits else None,
                capabilities=[durable._streaming_capability if streaming else durable.capability],
            )
            output = durable._output.dump_python(result.output, mode="json")
            if streaming:
                await write_stream(EVENTS_STREAM, {"event_kind": RESULT_EVENT_KIND, "output": output})
                await close_stream(EVENTS_STREAM)
            return {
                "output": output,
                "messages": ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json"),
                "new_from": len(history),
                "usage": _USAGE.dump_python(result.usage, mode="json"),
            }

        run_agent.__qualname__ = f"{self.name}.run"
        run_agent.__module__ = "perdure.pydantic_ai.agents"
        return workflow(name=f"{self.name}.run", max_recovery_attempts=max_recovery_attempts)(run_agent)

    # -- running ---------------------------------------------------------------------------------------
    def _inputs(
        self,
        user_prompt: str | Sequence[UserContent] | None,
        *,
        message_history: Sequence[ModelMessage] | None,
        deps: Any,
        model: Model | str | None,
        model_settings: ModelSettings | None,
        usage_limits: UsageLimits | None,
    ) -> dict[str, Any]:
        model_id: str | None
        if model is None or isinstance(model, str):
            model_id = model
        else:
            ids = [key for key, registered in (self.capability._extra_models or {}).items() if registered is model]
            if not ids:
                raise UserError(
                    f"model {model!r} is not registered with DurableAgent {self.name!r}: pass it in models={{...}} "
                    "and refer to it by its key, or pass a model name string"
                )
            model_id = ids[0]
        return {
            "user_prompt": user_prompt,
            "message_history": list(message_history) if message_history else None,
            "deps": self._deps.dump_python(deps, mode="json") if deps is not None else None,
            "model": model_id,
            "model_settings": dict(model_settings) if model_settings else None,
            "usage_limits": _LIMITS.dump_python(usage_limits, mode="json") if usage_limits else None,
        }

    def _result(self, raw: dict[str, Any], workflow_id: str) -> DurableRunResult[OutputDataT]:
        return DurableRunResult(
            output=self._output.validate_python(raw["output"]),
            workflow_id=workflow_id,
            _raw_messages=raw["messages"],
            _new_from=int(raw.get("new_from", 0)),
            _usage=_USAGE.validate_python(raw["usage"]),
        )

    async def start(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deps: AgentDepsT | None = None,
        model: Model | str | None = None,
        model_settings: ModelSettings | None = None,
        usage_limits: UsageLimits | None = None,
    ) -> WorkflowHandle:
        """Start the run in the background; `await handle.result()` gives the raw stored outcome."""
        inputs = self._inputs(
            user_prompt,
            message_history=message_history,
            deps=deps,
            model=model,
            model_settings=model_settings,
            usage_limits=usage_limits,
        )
        return await self._start(inputs, workflow_id, timeout)

    async def _start(self, inputs: dict[str, Any], workflow_id: str | None, timeout: float | None) -> WorkflowHandle:
        return await active_runtime().start(self.workflow, workflow_id=workflow_id, timeout=timeout, **inputs)

    async def run(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deps: AgentDepsT | None = None,
        model: Model | str | None = None,
        model_settings: ModelSettings | None = None,
        usage_limits: UsageLimits | None = None,
        usage: RunUsage | None = None,
    ) -> DurableRunResult[OutputDataT]:
        """Run the agent durably and return its result. The same `workflow_id` twice runs once.

        `usage`: a delegating tool passes `ctx.usage`; this run's usage is added to it.
        """
        result = await self._run(
            user_prompt,
            workflow_id=workflow_id,
            timeout=timeout,
            message_history=message_history,
            deps=deps,
            model=model,
            model_settings=model_settings,
            usage_limits=usage_limits,
        )
        if usage is not None:
            usage.incr(result.usage)
        return result

    async def _run(
        self,
        user_prompt: str | Sequence[UserContent] | None,
        *,
        workflow_id: str | None,
        timeout: float | None,
        message_history: Sequence[ModelMessage] | None,
        deps: AgentDepsT | None,
        model: Model | str | None,
        model_settings: ModelSettings | None,
        usage_limits: UsageLimits | None,
    ) -> DurableRunResult[OutputDataT]:
        inputs = self._inputs(
            user_prompt,
            message_history=message_history,
            deps=deps,
            model=model,
            model_settings=model_settings,
            usage_limits=usage_limits,
        )
        if workflow_id is None and timeout is None:
            if _context.in_durable_code():
                # Inside a workflow (or a tool's step) the run is a child workflow, like any workflow call.
                raw = await self.workflow(**inputs)
                return self._result(raw, "")
            wid, raw = await active_runtime().run_fresh(workflow_def_of(self.workflow), (), inputs)
            return self._result(raw, wid)
        handle = await self._start(inputs, workflow_id, timeout)
        return self._result(await handle.result(), handle.workflow_id)

    def run_sync(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        **kwargs: Any,
    ) -> DurableRunResult[OutputDataT]:
        """`run` for sync programs (the runtime launched with `with Perdure(...)`)."""
        return active_runtime().call_blocking(self.run(user_prompt, **kwargs))

    # -- following a run ----------------------------------------------------------------------------
    def run_stream_events(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        workflow_id: str | None = None,
        offset: int = 0,
        timeout: float | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deps: AgentDepsT | None = None,
        model: Model | str | None = None,
        model_settings: ModelSettings | None = None,
        usage_limits: UsageLimits | None = None,
    ) -> DurableRunEvents[OutputDataT]:
        """Run the agent durably and follow it: every event, live, then an `AgentRunResultEvent`.

        ```python
        # not run
        async with durable.run_stream_events("Plan my trip", workflow_id="trip-1") as events:
            async for event in events:
                ...
        ```

        The run's events go to its durable stream `"events"` as it goes. Leaving early does not stop
        the run; the same call with the same `workflow_id` and `offset=events.offset` resumes reading
        (from any process) and sees every later event once. Outside workflows only: inside one, use
        `run()` (with `stream_events=True` to publish the events).
        """
        self._refuse_in_workflow("run_stream_events()")
        if not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(f"offset must be a non-negative integer, got {offset!r}")
        inputs = self._inputs(
            user_prompt,
            message_history=message_history,
            deps=deps,
            model=model,
            model_settings=model_settings,
            usage_limits=usage_limits,
        )
        if not self.stream_events:
            inputs["stream_events"] = True
        return DurableRunEvents(lambda: self._start(inputs, workflow_id, timeout), self._result, offset)

    @asynccontextmanager
    async def run_stream(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        message_history: Sequence[ModelMessage] | None = None,
        deps: AgentDepsT | None = None,
        model: Model | str | None = None,
        model_settings: ModelSettings | None = None,
        usage_limits: UsageLimits | None = None,
    ) -> AsyncIterator[DurableStreamedRun[OutputDataT]]:
        """Run the agent durably and stream its final text: `async for text in run.stream_text(): ...`.

        Started on entry; leaving the block early stops reading, not the run. Outside workflows only.
        """
        events = self.run_stream_events(
            user_prompt,
            workflow_id=workflow_id,
            timeout=timeout,
            message_history=message_history,
            deps=deps,
            model=model,
            model_settings=model_settings,
            usage_limits=usage_limits,
        )
        async with events:
            await events.begin()
            yield DurableStreamedRun(events)

    @asynccontextmanager
    async def iter(
        self, user_prompt: str | Sequence[UserContent] | None = None, **kwargs: Any
    ) -> AsyncIterator[AgentRun[AgentDepsT, Any]]:
        """`Agent.iter()` inside a perdure workflow, durably: each model request and tool call a step.

        The caller drives the agent loop node by node, so the loop is the caller's workflow: outside one
        this is refused (use `run()`, `start()` or `run_stream_events()`, or `self.agent.iter()` for a
        plain, non-durable run).
        """
        if _context.current() is None:
            raise UserError(
                f"DurableAgent({self.name!r}).iter() can be durable only inside a perdure workflow, whose code "
                "drives the loop; outside one use run(), start() or run_stream_events()"
            )
        capabilities = [*kwargs.pop("capabilities", ()), self.capability]
        async with self.agent.iter(user_prompt, capabilities=capabilities, **kwargs) as run:
            yield run

    def _refuse_in_workflow(self, what: str) -> None:
        if _context.in_durable_code():
            raise UserError(
                f"DurableAgent({self.name!r}).{what} follows a run from outside it and cannot be used inside a "
                "workflow or step; call run() there (with stream_events=True to publish its events)"
            )

    async def result(self, workflow_id: str, timeout: float | None = None) -> DurableRunResult[OutputDataT]:
        """The result of a run started with `start()`, from any process."""
        runtime = active_runtime()
        raw = await (await runtime.retrieve(workflow_id)).result(timeout)
        return self._result(raw, workflow_id)

    def __repr__(self) -> str:
        return f"DurableAgent({self.name!r})"


def workflow_name(agent: DurableAgent[Any, Any]) -> str:
    return workflow_def_of(agent.workflow).name
