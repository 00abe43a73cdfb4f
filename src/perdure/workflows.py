"""`@workflow` and `@step`, durable recorded values, and the records management returns.

A workflow is a function whose progress is checkpointed; a step is a function whose outcome is. Calling a
workflow runs it durably (a fresh id); calling one inside another runs a child workflow with a
deterministic id. Calling a step inside a workflow runs it once and checkpoints its result; on replay the
recorded result is returned without running it. Outside a workflow a step simply runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from . import _context
from .errors import ConfigurationError, SerializationError, StepTimeout
from .serialization import FunctionCodec, check_serializer, dump_error, load_error, parse_error
from .store.base import StepRecord, WorkflowRecord, WorkflowStatus, now_ms

if TYPE_CHECKING:
    from .runtime import Perdure

P = ParamSpec("P")
R = TypeVar("R")

_REGISTRY: dict[str, WorkflowDef] = {}


def registered_workflows() -> dict[str, WorkflowDef]:
    return dict(_REGISTRY)


def _qualified_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclass(frozen=True, slots=True)
class WorkflowDef:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    codec: FunctionCodec
    max_recovery_attempts: int | None
    wrapper: Callable[..., Any] | None = None


@dataclass(frozen=True, slots=True)
class StepOptions:
    max_attempts: int = 1
    retry_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()
    timeout: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with ±10% jitter."""
        base = min(self.retry_interval * (self.backoff ** (attempt - 1)), self.max_interval)
        return base * random.uniform(0.9, 1.1)

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.non_retryable)


@dataclass(frozen=True, slots=True)
class StepDef:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    codec: FunctionCodec
    options: StepOptions


def workflow_def_of(fn: Callable[..., Any]) -> WorkflowDef:
    defn = getattr(fn, "__perdure_workflow__", None)
    if not isinstance(defn, WorkflowDef):
        raise ConfigurationError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a perdure workflow; decorate it with @workflow"
        )
    return defn


def _active_runtime() -> Perdure:
    from .runtime import active_runtime

    return active_runtime()


# -- @workflow ------------------------------------------------------------------------------------------


@overload
def workflow(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def workflow(
    *, name: str | None = None, max_recovery_attempts: int | None = None, serializer: str = "json"
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    max_recovery_attempts: int | None = None,
    serializer: str = "json",
) -> Any:
    """Make a function a durable workflow. Async and sync functions both work.

    `name` is the stable name stored with each run (default: module.qualname); keep it stable across
    deploys, since recovery finds the code by it. `max_recovery_attempts` overrides the runtime's limit.
    """

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise ConfigurationError(f"@workflow needs a function, got {f!r}")
        if max_recovery_attempts is not None and max_recovery_attempts < 1:
            raise ConfigurationError("max_recovery_attempts must be at least 1")
        wf_name = name or _qualified_name(f)
        is_async = inspect.iscoroutinefunction(f)
        defn = WorkflowDef(wf_name, f, is_async, FunctionCodec(f, check_serializer(serializer)), max_recovery_attempts)
        existing = _REGISTRY.get(wf_name)
        if existing is not None and _qualified_name(existing.fn) != _qualified_name(f):
            raise ConfigurationError(
                f"two workflows are named {wf_name!r} ({_qualified_name(existing.fn)} and {_qualified_name(f)}); "
                "workflow names must be unique"
            )

        if is_async:

            @functools.wraps(f)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await _call_workflow(defn, args, kwargs)

            wrapper: Callable[..., Any] = async_wrapper
        else:

            @functools.wraps(f)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                return _call_workflow_sync(defn, args, kwargs)

            wrapper = sync_wrapper
        full = WorkflowDef(wf_name, f, is_async, defn.codec, max_recovery_attempts, wrapper)
        wrapper.__perdure_workflow__ = full  # type: ignore[attr-defined]
        _REGISTRY[wf_name] = full
        return wrapper

    return decorate(fn) if fn is not None else decorate


async def _call_workflow(defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ctx = _context.current()
    if ctx is not None:
        return await ctx.runtime.run_child(ctx, defn, args, kwargs)
    scope = _context.step_scope()
    if scope is not None:
        return await scope.ctx.runtime.run_in_step(scope, defn, args, kwargs)
    runtime = _active_runtime()
    return await runtime.run_direct(defn, args, kwargs)


def _call_workflow_sync(defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ctx = _context.current()
    if ctx is not None:
        if ctx.on_loop_thread():
            raise ConfigurationError(
                f"sync workflow {defn.name!r} called from async workflow {ctx.name!r}: "
                f"use `await app.start({defn.fn.__name__}, ...)` and await its result"
            )
        return ctx.blocking(ctx.runtime.run_child(ctx, defn, args, kwargs))
    runtime = _active_runtime()
    return runtime.call_blocking(runtime.run_direct(defn, args, kwargs))


# -- @step ----------------------------------------------------------------------------------------------


@overload
def step(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    max_attempts: int = 1,
    retry_interval: float = 1.0,
    backoff: float = 2.0,
    max_interval: float = 60.0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = Exception,
    non_retryable: tuple[type[BaseException], ...] | type[BaseException] = (),
    timeout: float | None = None,
    serializer: str = "json",
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int = 1,
    retry_interval: float = 1.0,
    backoff: float = 2.0,
    max_interval: float = 60.0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = Exception,
    non_retryable: tuple[type[BaseException], ...] | type[BaseException] = (),
    timeout: float | None = None,
    serializer: str = "json",
) -> Any:
    """Make a function a checkpointed step.

    Failed attempts are retried up to `max_attempts` in all, waiting `retry_interval * backoff**n` seconds
    (capped at `max_interval`) between them, for exceptions of `retry_on` that are not `non_retryable`.
    `timeout` bounds each attempt of an async step (raising `StepTimeout`).
    """
    options = StepOptions(
        max_attempts=max_attempts,
        retry_interval=retry_interval,
        backoff=backoff,
        max_interval=max_interval,
        retry_on=retry_on if isinstance(retry_on, tuple) else (retry_on,),
        non_retryable=non_retryable if isinstance(non_retryable, tuple) else (non_retryable,),
        timeout=timeout,
    )
    _check_step_options(options)

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        is_async = inspect.iscoroutinefunction(f)
        if timeout is not None and not is_async:
            raise ConfigurationError(
                f"step {f.__qualname__}: timeout= needs an async step (a thread cannot be stopped)"
            )
        defn = StepDef(name or f.__qualname__, f, is_async, FunctionCodec(f, check_serializer(serializer)), options)
        if is_async:

            @functools.wraps(f)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = _context.current()
                if ctx is None:
                    return await run_attempts(defn, args, kwargs, None)
                return await run_step(ctx, defn, args, kwargs)

            async_wrapper.__perdure_step__ = defn  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(f)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = _context.current()
            if ctx is None:
                return _run_attempts_sync(defn, args, kwargs)
            if ctx.on_loop_thread():
                raise ConfigurationError(
                    f"sync step {defn.name!r} called from async workflow {ctx.name!r}: make the step "
                    "`async def`, or call it from a sync workflow"
                )
            return _run_step_sync(ctx, defn, args, kwargs)

        sync_wrapper.__perdure_step__ = defn  # type: ignore[attr-defined]
        return sync_wrapper

    return decorate(fn) if fn is not None else decorate


def _check_step_options(o: StepOptions) -> None:
    if o.max_attempts < 1:
        raise ConfigurationError(f"max_attempts must be at least 1, got {o.max_attempts}")
    if o.retry_interval < 0 or o.max_interval < 0 or o.backoff < 1:
        raise ConfigurationError("retry_interval and max_interval must be >= 0 and backoff >= 1")
    if o.timeout is not None and o.timeout <= 0:
        raise ConfigurationError(f"timeout must be positive, got {o.timeout}")


async def run_attempts(
    defn: StepDef,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: _context.WorkflowContext | None,
    tries: list[int] | None = None,
) -> Any:
    """Run an async step body with its retry policy; the last failure propagates.

    `tries`, when given, is left holding the number of attempts made (for the checkpoint).
    """
    opts = defn.options
    attempt = 1
    while True:
        if tries is not None:
            tries[:] = [attempt]
        try:
            if opts.timeout is not None:
                try:
                    async with asyncio.timeout(opts.timeout):
                        return await defn.fn(*args, **kwargs)
                except TimeoutError:
                    raise StepTimeout(f"step {defn.name!r} took longer than {opts.timeout}s") from None
            return await defn.fn(*args, **kwargs)
        except Exception as exc:
            if attempt >= opts.max_attempts or not opts.retryable(exc):
                exc.__perdure_attempts__ = attempt  # type: ignore[attr-defined]
                raise
            if ctx is not None:
                ctx.raise_if_cancelled()
            await asyncio.sleep(opts.delay(attempt))
            attempt += 1


def _run_attempts_sync(
    defn: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any], tries: list[int] | None = None
) -> Any:
    import time

    opts = defn.options
    attempt = 1
    # Inside a step body the workflow context is hidden; its cancel must still cut a retry wait short.
    scope = _context.step_scope()
    ctx = scope.ctx if scope is not None else _context.current()
    while True:
        if tries is not None:
            tries[:] = [attempt]
        try:
            return defn.fn(*args, **kwargs)
        except Exception as exc:
            if attempt >= opts.max_attempts or not opts.retryable(exc):
                exc.__perdure_attempts__ = attempt  # type: ignore[attr-defined]
                raise
            delay = opts.delay(attempt)
            if ctx is not None:
                if ctx.wakeup.wait(delay):
                    ctx.raise_if_cancelled()
            else:
                time.sleep(delay)
            attempt += 1


def _replay(ctx: _context.WorkflowContext, defn: StepDef, pos: int, rec: StepRecord, h: str | None) -> Any:
    ctx.check_replay(pos, rec, defn.name, h)
    if rec.error is not None:
        raise load_error(rec.error)
    return defn.codec.load_result(rec.output)


async def run_step(ctx: _context.WorkflowContext, defn: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    pos, rec = await ctx.next_position()
    h = defn.codec.fingerprint(args, kwargs)
    if rec is not None:
        return _replay(ctx, defn, pos, rec, h)
    started = now_ms()
    tries = [1]
    try:
        with _context.in_step(ctx, pos, tries):
            result = await run_attempts(defn, args, kwargs, ctx, tries)
    except Exception as exc:
        ctx.raise_if_cancelled()
        attempts = getattr(exc, "__perdure_attempts__", 1)
        await ctx.record(
            ctx.step_record(pos, defn.name, args_hash=h, error=dump_error(exc), attempts=attempts, started_at=started)
        )
        raise
    output = defn.codec.dump_result(result)
    await ctx.record(ctx.step_record(pos, defn.name, args_hash=h, output=output, attempts=tries[0], started_at=started))
    return result


def _run_step_sync(ctx: _context.WorkflowContext, defn: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    pos, rec = ctx.take_position()
    h = defn.codec.fingerprint(args, kwargs)
    if rec is not None:
        return _replay(ctx, defn, pos, rec, h)
    started = now_ms()
    tries = [1]
    try:
        with _context.in_step(ctx, pos, tries):
            result = _run_attempts_sync(defn, args, kwargs, tries)
    except Exception as exc:
        ctx.raise_if_cancelled()
        attempts = getattr(exc, "__perdure_attempts__", 1)
        record = ctx.step_record(
            pos, defn.name, args_hash=h, error=dump_error(exc), attempts=attempts, started_at=started
        )
        ctx.blocking(ctx.record(record))
        raise
    output = defn.codec.dump_result(result)
    record = ctx.step_record(pos, defn.name, args_hash=h, output=output, attempts=tries[0], started_at=started)
    ctx.blocking(ctx.record(record))
    return result


_ANY_CODEC = FunctionCodec(lambda: None)


async def durable_call(
    name: str,
    body: Callable[[], Awaitable[Any]],
    *,
    options: StepOptions | None = None,
    args_fingerprint: str | None = None,
    defer_checkpoint: bool = False,
) -> Any:
    """Run `body()` once as a step named `name` at the next position; replay its JSON result after.

    `defer_checkpoint`: the result only feeds code that prepares the run's next step (a model request
    for pydantic-ai's graph), so on a store that commits on the loop thread its checkpoint may wait for
    the run's next durable operation or outcome (`WorkflowContext.record_soon`). Where a commit waits
    off the loop, every such step's write starts at once and overlaps what follows, deferred or not.

    For integrations (the Pydantic AI capability) that hand the engine a callback. The result must be
    JSON-ready (dicts, lists, strings, numbers); it is replayed as loaded from JSON.
    """
    ctx = _context.require(f"step {name!r}")
    defn = StepDef(name, lambda: body(), True, _ANY_CODEC, options or StepOptions())
    pos, rec = await ctx.next_position()
    if rec is not None:
        return _replay(ctx, defn, pos, rec, args_fingerprint)
    started = now_ms()
    tries = [1]
    try:
        with _context.in_step(ctx, pos, tries):
            result = await run_attempts(defn, (), {}, ctx, tries)
    except Exception as exc:
        ctx.raise_if_cancelled()
        attempts = getattr(exc, "__perdure_attempts__", 1)
        await ctx.record(
            ctx.step_record(
                pos, name, args_hash=args_fingerprint, error=dump_error(exc), attempts=attempts, started_at=started
            )
        )
        raise
    output = _ANY_CODEC.dump_result(result)
    record = ctx.step_record(
        pos, name, args_hash=args_fingerprint, output=output, attempts=tries[0], started_at=started
    )
    if not ctx.is_sync and (defer_checkpoint or ctx.store.commits_off_loop):
        ctx.record_soon(record)  # committed before this run's next durable operation starts
    else:
        await ctx.record(record)
    return result


# -- recorded values ------------------------------------------------------------------------------------


async def record_value(
    name: str, produce: Callable[[], Any], dump: Callable[[Any], str], load: Callable[[str], Any]
) -> Any:
    """Run `produce` once per workflow position and replay its recorded value afterwards."""
    ctx = _context.require(name)
    pos, rec = await ctx.next_position()
    if rec is not None:
        ctx.check_replay(pos, rec, name, None)
        return load(rec.output or "null")
    value = produce()
    record = ctx.step_record(pos, name, output=dump(value))
    if ctx.on_loop_thread():
        await ctx.record(record)
    else:
        ctx.blocking(ctx.record(record))
    return value


def _run_value_sync(coro: Coroutine[Any, Any, R]) -> R:
    """Run a recorded-value coroutine for a sync workflow: on the runtime loop, with the workflow bound."""
    ctx = _context.require("a perdure _sync function")
    if ctx.on_loop_thread():
        coro.close()
        raise ConfigurationError("perdure's _sync functions are for sync workflows; use the async form here")

    async def in_context() -> R:
        token = _context.bind(ctx)
        try:
            return await coro
        finally:
            _context.unbind(token)

    return ctx.blocking(in_context())


def _dump_datetime(v: datetime) -> str:
    return f'"{v.isoformat()}"'


def _load_datetime(s: str) -> datetime:
    return datetime.fromisoformat(s.strip('"'))


async def now() -> datetime:
    """The current time (UTC), recorded: a replay sees the same value."""
    return cast(datetime, await record_value("perdure.now", lambda: datetime.now(UTC), _dump_datetime, _load_datetime))


async def uuid4() -> uuid_module.UUID:
    """A random UUID, recorded: a replay sees the same value."""
    return cast(
        uuid_module.UUID,
        await record_value(
            "perdure.uuid4", uuid_module.uuid4, lambda u: f'"{u}"', lambda s: uuid_module.UUID(s.strip('"'))
        ),
    )


def now_sync() -> datetime:
    return _run_value_sync(now())


def uuid4_sync() -> uuid_module.UUID:
    return _run_value_sync(uuid4())


async def patched(change: str) -> bool:
    """True when this run may take the new code path named `change`.

    A run that is replaying history recorded before the change returns False (and keeps its old path);
    any run that reaches this point fresh records a marker and returns True.
    """
    ctx = _context.require("perdure.patched()")
    marker = f"perdure.patch:{change}"
    rec = ctx.peek_recorded()
    if rec is not None:
        if rec.name == marker:
            ctx.take_position()
            return True
        return False
    await record_value(marker, lambda: True, lambda v: "true", lambda s: True)
    return True


def patched_sync(change: str) -> bool:
    return _run_value_sync(patched(change))


def workflow_id() -> str:
    """The id of the workflow running this code."""
    return _context.require("perdure.workflow_id()").workflow_id


# -- records for management ---------------------------------------------------------------------------


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """One workflow as stored. `inputs` and `output` are the stored JSON text."""

    workflow_id: str
    name: str
    status: WorkflowStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    executor_id: str | None
    app_version: str | None
    parent_id: str | None
    forked_from: str | None
    recovery_attempts: int
    queue_name: str | None
    deadline_at: datetime | None
    inputs: str | None
    output: str | None
    error: str | None
    """`Type: message` of the stored exception, if any."""
    error_traceback: str | None
    priority: int = 0
    """Queue priority (lower runs first)."""
    partition_key: str | None = None
    dedup_key: str | None = None
    """Held while the workflow is queued or running; released when it finishes."""
    delay_until: datetime | None = None
    """A DELAYED workflow is not dequeued before this time."""

    @classmethod
    def from_record(cls, r: WorkflowRecord) -> WorkflowInfo:
        err = parse_error(r.error) if r.error else None
        return cls(
            workflow_id=r.workflow_id,
            name=r.name,
            status=WorkflowStatus(r.status),
            created_at=_dt(r.created_at) or datetime.now(UTC),
            updated_at=_dt(r.updated_at) or datetime.now(UTC),
            started_at=_dt(r.started_at),
            completed_at=_dt(r.completed_at),
            executor_id=r.executor_id,
            app_version=r.app_version,
            parent_id=r.parent_id,
            forked_from=r.forked_from,
            recovery_attempts=r.recovery_attempts,
            queue_name=r.queue_name,
            deadline_at=_dt(r.deadline_at),
            inputs=r.inputs if r.serializer == "json" else None,
            output=r.output if r.serializer == "json" else None,
            error=err.summary if err else None,
            error_traceback=err.traceback if err else None,
            priority=r.priority,
            partition_key=r.partition_key,
            dedup_key=r.dedup_key,
            delay_until=_dt(r.delay_until),
        )


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One checkpointed operation of a workflow, at position `step_id`."""

    workflow_id: str
    step_id: int
    name: str
    status: str
    """SUCCESS or ERROR; WAITING for a `recv` or `get_event` still waiting (its output is the deadline)."""
    output: str | None
    error: str | None
    attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    child_id: str | None

    @classmethod
    def from_record(cls, r: StepRecord) -> StepInfo:
        err = parse_error(r.error) if r.error else None
        return cls(
            workflow_id=r.workflow_id,
            step_id=r.step_id,
            name=r.name,
            status="ERROR" if r.error is not None else ("WAITING" if r.completed_at is None else "SUCCESS"),
            output=r.output,
            error=err.summary if err else None,
            attempts=r.attempts,
            started_at=_dt(r.started_at),
            completed_at=_dt(r.completed_at),
            child_id=r.child_id,
        )


__all__ = [
    "SerializationError",
    "StepInfo",
    "WorkflowInfo",
    "now",
    "patched",
    "step",
    "uuid4",
    "workflow",
    "workflow_id",
]
