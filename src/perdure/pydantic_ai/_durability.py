"""`PerdureDurability`: Pydantic AI's durable-execution capability, on perdure.

Built on pydantic-ai's public engine surface (`BaseDurabilityCapability` + a callable operation backend):
inside a perdure workflow every model request, tool call, MCP/dynamic discovery and event-handler call
runs as one named perdure step whose JSON result is checkpointed; outside a workflow the agent behaves
exactly as the plain agent.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypedDict, cast

from pydantic import TypeAdapter
from pydantic_ai._agent_graph import set_agent_graph_sleep
from pydantic_ai._utils import now_utc
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.capabilities.abstract import AbstractCapability, WrapRunHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    DurableOperationId,
    EventStreamHandlerId,
    JournalCallableOperationBackend,
    ModelCompactMessagesId,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetKind,
    ToolsetValidateToolArgumentsId,
    conversation_id_from_run_id,
)
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, UsageLimitExceeded, UserError
from pydantic_ai.external_events import external_event_scope
from pydantic_ai.messages import AgentStreamEvent, ModelResponse, ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.output import OutputContext
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT, RunContext, ToolDefinition
from pydantic_ai.toolsets import ToolsetTool
from pydantic_ai.usage import RunUsage
from pydantic_core import PydanticSerializationError

from .. import _context
from ..errors import NonDeterminismError, SerializationError, WorkflowCancelled
from ..messaging import sleep as durable_sleep
from ..messaging import write_stream
from ..workflows import StepInfo, StepOptions, durable_call, record_value
from ._events import PerdureEventWaiter
from ._stream import EVENT, EVENTS_STREAM


class StepConfig(TypedDict, total=False):
    """Retry policy of one kind of step (see `perdure.step`). Also accepted as tool metadata
    `{"perdure": {...}}`; `{"perdure": False}` runs that tool inline, without a checkpoint."""

    max_attempts: int
    retry_interval: float
    backoff: float
    max_interval: float
    timeout: float


NON_RETRYABLE: tuple[type[BaseException], ...] = (
    # Control flow and configuration errors: retrying cannot change the outcome.
    ModelRetry,
    ApprovalRequired,
    CallDeferred,
    UserError,
    UsageLimitExceeded,
    SerializationError,
    NonDeterminismError,
    PydanticSerializationError,
    TypeError,
)


def _serialization_failure(exc: Exception) -> BaseException:
    return SerializationError(f"a value of this agent run cannot be stored as JSON: {exc}")


_OPTIONS_CACHE: dict[tuple[tuple[str, Any], ...], StepOptions] = {}


def step_options(config: Mapping[str, Any] | None) -> StepOptions:
    """The StepOptions of a StepConfig, validated once per distinct config (this runs for every step)."""
    key = tuple(sorted((config or {}).items()))
    cached = _OPTIONS_CACHE.get(key)
    if cached is None:
        cached = _OPTIONS_CACHE[key] = _build_options(dict(config or {}))
    return cached


def _build_options(config: dict[str, Any]) -> StepOptions:
    unknown = set(config) - set(StepConfig.__annotations__)
    if unknown:
        raise UserError(
            f"unknown perdure step option(s) {sorted(unknown)}; expected {sorted(StepConfig.__annotations__)}"
        )
    return StepOptions(non_retryable=NON_RETRYABLE, **config)


class PerdureOperationBackend(JournalCallableOperationBackend[StepConfig]):
    """Runs each durable operation as one perdure step, named by pydantic-ai's journal convention."""

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: StepConfig,
    ) -> object:
        options = step_options(config)
        run_ctx = _tool_run_context(operation_id, cache_key)
        if run_ctx is None:
            # Model requests, discovery and event handlers: what they return only feeds the graph's next
            # step, so on SQLite their checkpoint may wait for it. Tools and capability operations may
            # have side effects that must not run again while other work goes on: written at once.
            defer = isinstance(operation_id, _DEFERRABLE)
            return await durable_call(name, body, options=options, defer_checkpoint=defer)
        # A tool may run other agents with `usage=ctx.usage`. Their usage is recorded with the tool's
        # checkpoint and added back when the checkpoint is replayed, so the run's usage stays complete.
        executed = False
        attempts_usage = RunUsage()  # what every attempt so far added, failed ones included

        async def measured() -> object:
            nonlocal executed
            executed = True
            # The tool's own context (a copy per call) counts on a copy of the run's usage for the
            # length of the body: what the tool adds is then its own, not also what tool calls running
            # alongside add to the shared object meanwhile (which a replay would count twice). The
            # price: a delegate's usage limits see the run's totals as of its tool's start.
            shared = run_ctx.usage
            before = copy.copy(shared)
            own = run_ctx.usage = copy.copy(shared)
            try:
                result = await body()
            finally:
                run_ctx.usage = shared
                delta = own - before
                if delta.has_values():
                    shared.incr(delta)
                    attempts_usage.incr(delta)
            if not attempts_usage.has_values():
                return {"result": result}
            return {"result": result, "usage_delta": _USAGE.dump_python(attempts_usage, mode="json")}

        payload = await durable_call(name, measured, options=options)
        assert isinstance(payload, dict)
        if not executed and "usage_delta" in payload:
            run_ctx.usage.incr(_USAGE.validate_python(payload["usage_delta"]))
        return payload["result"]


_DEFERRABLE = (
    ModelRequestId,
    ModelCompactMessagesId,
    ToolsetGetToolsId,
    ToolsetGetInstructionsId,
    EventStreamHandlerId,
)
_USAGE: TypeAdapter[RunUsage] = TypeAdapter(RunUsage)
_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)
MODEL_STEP_SUFFIXES = ("__model.request", "__model.request_stream")


def model_response(step: StepInfo) -> ModelResponse | None:
    """The model response a model-request step checkpointed (with its `usage`, and the provider's
    `usage.cost` where it reports one), or None for any other step or one that did not succeed.

    ```python
    # not run
    for step in await app.list_steps(workflow_id):
        if (response := model_response(step)) is not None:
            print(step.name, response.model_name, response.usage.input_tokens, response.usage.output_tokens)
    ```
    """
    if not step.name.endswith(MODEL_STEP_SUFFIXES) or step.status != "SUCCESS" or step.output is None:
        return None
    return _RESPONSE.validate_json(step.output)  # data only: validation never runs stored code


def _tool_run_context(operation_id: DurableOperationId, cache_key: tuple[object, ...]) -> RunContext[Any] | None:
    if not isinstance(operation_id, ToolsetCallToolId):
        return None
    return next((k for k in cache_key if isinstance(k, RunContext)), None)


@dataclass(init=False, kw_only=True)
class PerdureDurability(BaseDurabilityCapability[AgentDepsT]):
    """Make an agent durable inside perdure workflows.

    ```python
    # not run
    agent = Agent("openai:gpt-5", name="geography", capabilities=[PerdureDurability()])

    @perdure.workflow
    async def answer(question: str) -> str:
        return (await agent.run(question)).output
    ```

    Model requests, tool calls (each a step named after its tool), MCP and dynamic-toolset discovery
    and event-handler calls run as steps. Per-tool control through tool metadata: `{"perdure": False}`
    runs the tool inline; `{"perdure": {"max_attempts": 3}}` sets its retry policy.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="perdure",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="workflow",
        codec=JSON_CODEC,  # the journal stays readable JSON in the steps table
        serialization_failure=_serialization_failure,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        tool_call_result_upgrade_lenient=False,
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        # Toolsets added at run time would bypass the checkpointing set up for the agent's own toolsets.
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        tool_config_key="perdure",
        cancellation_error_types=(WorkflowCancelled,),
    )

    def __init__(
        self,
        *,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        name: str | None = None,
        model_step: StepConfig | None = None,
        tool_steps: StepConfig | None = None,
        mcp_steps: StepConfig | None = None,
        event_steps: StepConfig | None = None,
        stream_events: bool = False,
    ) -> None:
        """Args:
        models: extra models by id, for switching models at run time (a `Model` instance cannot be
            journaled, so a run-time model must be registered here or given as a model-name string).
        event_stream_handler: called with the run's events; model events inside the model step,
            tool events each in a step of their own.
        name: the agent's durable name (default: the agent's `name`); it prefixes every step name.
        model_step, tool_steps, mcp_steps, event_steps: retry policies (`StepConfig`) per kind.
        stream_events: also write every event of a durable run, as JSON, to the workflow's durable
            stream `"events"` (`read_stream(workflow_id, "events", offset=...)` follows it live).
        """
        if stream_events:
            event_stream_handler = _streaming_handler(event_stream_handler)
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        for config in (model_step, tool_steps, mcp_steps, event_steps):
            step_options(config)  # refuse unknown options now, not at the first run
        self._model_step: StepConfig = model_step or {}
        self._tool_steps: StepConfig = tool_steps or {}
        self._mcp_steps: StepConfig = mcp_steps or {}
        self._event_steps: StepConfig = event_steps or {}

    def for_agent(self, agent: AbstractAgent[AgentDepsT, Any]) -> AbstractCapability[AgentDepsT]:
        # Binding walks the agent's toolsets and capabilities; a capability passed per run (as
        # DurableAgent does) would pay that on every run. Bind once per agent, as construction does.
        # Agents are not hashable: key by identity, holding the agent weakly.
        cache: dict[int, tuple[weakref.ref[Any], AbstractCapability[AgentDepsT]]] = self.__dict__.setdefault(
            "_bound_for", {}
        )
        hit = cache.get(id(agent))
        if hit is not None and hit[0]() is agent:
            return hit[1]
        bound = super().for_agent(agent)
        cache[id(agent)] = (weakref.ref(agent), bound)
        return bound

    # -- where we are ----------------------------------------------------------------------------------
    @property
    def in_durable_context(self) -> bool:
        # Inside a step body the workflow context is hidden, so a nested agent run there is a plain run.
        return _context.current() is not None

    def get_default_run_id(self) -> str | None:
        ctx = _context.current()
        if ctx is None:
            return None
        # Runs started together (asyncio.gather) resolve their ids at the same position: count them.
        counts: dict[int, int] = ctx.scratch.setdefault("pydantic_ai.run_ids", {})
        index = counts.get(ctx.position, 0)
        counts[ctx.position] = index + 1
        base = f"{ctx.workflow_id}:{ctx.position}"
        return base if index == 0 else f"{base}:{index}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        if not self.in_durable_context:
            return None
        # Recorded, so a recovered run counts its `timeout=` from when it first started.
        value = await record_value(
            f"{self.name}.run_start_time",
            now_utc,
            lambda v: f'"{v.isoformat()}"',
            lambda s: datetime.fromisoformat(s.strip('"')),
        )
        return cast(datetime, value)

    # -- the backend -----------------------------------------------------------------------------------
    def get_durable_operation_backend(self) -> PerdureOperationBackend:
        # Asked for several times per run, and it depends only on this capability's settings: build it
        # once. Binding to an agent copies the capability (and so this cache): a copy builds its own.
        cached = self.__dict__.get("_operation_backend")
        if cached is not None and cached[0] is self:
            return cast(PerdureOperationBackend, cached[1])
        kinds: tuple[ToolsetKind, ...] = ("function", "mcp", "dynamic")
        resolvers = {kind: self._build_resolve_tool_config(self._toolset_base_config(kind)) for kind in kinds}

        def tool_config(
            operation_id: DurableOperationId, tool: object | None, tool_name: str
        ) -> StepConfig | Literal[False]:
            assert isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId)
            resolve = resolvers[operation_id.toolset_kind]
            return cast(StepConfig | Literal[False], resolve(cast(ToolsetTool[Any] | None, tool), tool_name))

        backend = PerdureOperationBackend(
            agent_name=self.name,
            default_model_id=self.default_model_id,
            config=RoleBasedOperationConfig(
                model=self._model_step,
                event=self._event_steps,
                capability=self._tool_steps,
                tool=self._tool_steps,
                resolve_tool=tool_config,
            ),
        )
        self.__dict__["_operation_backend"] = (self, backend)
        return backend

    def _toolset_base_config(self, kind: ToolsetKind) -> Any:
        return self._mcp_steps if kind == "mcp" else self._tool_steps

    def _normalize_unit_config(self, config: Any) -> Any:
        if config is False:
            return config
        step_options(config)  # a bad per-tool option is a clear error, not a retry loop
        return config

    # -- the run ---------------------------------------------------------------------------------------
    # Model and tool steps hand their result on before their commit (record_soon). Code the agent runs
    # in the workflow itself has no step to wait at, so it waits in these hooks: inline tools (their
    # argument validators too) and output functions and validators never act on a model response that
    # a crash could still take back (the model would be asked again, and might answer otherwise).
    async def before_tool_validate(
        self, ctx: RunContext[AgentDepsT], *, call: ToolCallPart, tool_def: ToolDefinition, args: str | dict[str, Any]
    ) -> str | dict[str, Any]:
        await _settle_checkpoints()
        return args

    async def before_tool_execute(
        self, ctx: RunContext[AgentDepsT], *, call: ToolCallPart, tool_def: ToolDefinition, args: dict[str, Any]
    ) -> dict[str, Any]:
        await _settle_checkpoints()
        return args

    async def before_output_process(
        self, ctx: RunContext[AgentDepsT], *, output_context: OutputContext, output: Any
    ) -> Any:
        # With no output function or validator, processing only parses the model's output: the final
        # model response can then share its commit with the run's outcome (on SQLite).
        if output_context.has_function or _has_output_validators(ctx.agent):
            await _settle_checkpoints()
        return output

    async def wrap_run(self, ctx: RunContext[AgentDepsT], *, handler: WrapRunHandler) -> AgentRunResult[Any]:
        if not self.in_durable_context:
            return await super().wrap_run(ctx, handler=handler)
        with _durable_graph_sleep(), external_event_scope(PerdureEventWaiter(self.name)):
            return await super().wrap_run(ctx, handler=handler)


def _has_output_validators(agent: object) -> bool:
    # pydantic-ai has no public accessor for an agent's `@output_validator`s; where its private list is
    # not found (another agent class, another version), assume there are some.
    validators = getattr(agent, "_output_validators", None)
    return validators is None or bool(validators)


async def _settle_checkpoints() -> None:
    run = _context.current()
    if run is not None:
        await run.settle()


def _streaming_handler(user: EventStreamHandler[Any] | None) -> EventStreamHandler[Any]:
    """Write each event to the run's durable stream, then hand it to the user's handler, if any.

    Model events arrive inside the model-request step, tool events each in a step of their own: a step
    that runs again rewrites its values instead of adding them, so readers see every event once.
    """

    async def handler(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        async def tee() -> AsyncIterator[AgentStreamEvent]:
            async for event in events:
                if _context.in_durable_code():
                    await write_stream(EVENTS_STREAM, EVENT.dump_python(event, mode="json"))
                yield event

        if user is None:
            async for _ in tee():
                pass
        else:
            await user(ctx, tee())

    return handler


@contextmanager
def _durable_graph_sleep() -> Generator[None]:
    """Waits inside the agent graph (between polls of a background response) become durable sleeps."""
    with set_agent_graph_sleep(durable_sleep):
        yield
