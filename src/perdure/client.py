"""`Client`: inspect and steer workflows from a process that does not run them (a web API, a script, a CLI).

A Client never needs the workflows' code: it reads and writes the system database only. Work it asks for
(start by name, resume, fork) is put on perdure's internal queue, where any launched runtime that has the
code picks it up. It also talks to workflows: `send`, `get_event`, `get_all_events`, `read_stream`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loopthread import LoopThread
from ._management import Manager, WorkflowHandle, cancelled_with
from .errors import ConfigurationError, WorkflowConflictError, WorkflowNotFound
from .queue_admin import ClientQueues
from .queues import resume_queue
from .serialization import dump_untyped_args
from .store import create_store
from .store.base import INTERNAL_QUEUE, RESUMABLE_STATUSES, Store, WorkflowRecord, WorkflowStatus, now_ms
from .store.notify import queue_key

T = TypeVar("T")


class Client(ClientQueues, Manager):
    """`async with Client(url) as client:` (or `with Client(url) as client:` and the `_sync` methods)."""

    def __init__(self, database_url: str | None = None, *, poll_interval: float = 0.1) -> None:
        from .runtime import DEFAULT_DATABASE_URL

        self.database_url = database_url or os.environ.get("PERDURE_DATABASE_URL") or DEFAULT_DATABASE_URL
        self._store = create_store(self.database_url)
        self.poll_interval = poll_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: LoopThread | None = None

    @property
    def store(self) -> Store:
        return self._store

    async def open(self) -> None:
        if self._loop is not None:
            return
        await self._store.open()
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if self._loop is not None:
            await self._store.close()
            self._loop = None

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> Client:
        runner = LoopThread("perdure-client")
        try:
            runner.run(self.open())
        except BaseException:
            runner.stop()
            raise
        self._runner = runner
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.run(self.close())
            self._runner.stop()
            self._runner = None

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            await self.open()
        if asyncio.get_running_loop() is self._loop:
            return await coro
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            coro.close()
            raise ConfigurationError("the _sync methods need `with Client(...) as client:`")
        return self._runner.run(self._on_loop(coro))

    async def _result(self, workflow_id: str, timeout: float | None) -> Any:
        return await self._on_loop(super()._result(workflow_id, timeout))

    # -- steering ----------------------------------------------------------------------------------------
    async def start(
        self,
        workflow_name: str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Start the workflow registered as `workflow_name` with these arguments, without its code here.

        The run is queued for any launched runtime that has the code (woken at once on PostgreSQL, within
        its `poll_interval` on SQLite); the arguments are stored as JSON and checked against the
        function when a runtime takes it. The same `workflow_id` started twice runs once.
        """
        if not isinstance(workflow_name, str) or not workflow_name:
            raise ConfigurationError(f"workflow_name must be a non-empty string, got {workflow_name!r}")
        if workflow_id is not None and (
            not isinstance(workflow_id, str) or not workflow_id.strip() or len(workflow_id) > 512
        ):
            raise ConfigurationError(
                f"workflow_id must be a non-empty string of at most 512 characters, got {workflow_id!r}"
            )
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout}")
        t = now_ms()
        record = WorkflowRecord(
            workflow_id=workflow_id or uuid.uuid4().hex,
            name=workflow_name,
            status=WorkflowStatus.ENQUEUED,
            inputs=dump_untyped_args(args, kwargs),
            created_at=t,
            updated_at=t,
            queue_name=INTERNAL_QUEUE,
            timeout_ms=None if timeout is None else int(timeout * 1000),
        )

        async def go() -> WorkflowHandle:
            outcome = await self._store.workflow_insert(record)
            if not outcome.inserted and outcome.record.name != workflow_name:
                raise WorkflowConflictError(
                    f"workflow id {record.workflow_id!r} is already used by a run of {outcome.record.name!r}, "
                    f"not {workflow_name!r}"
                )
            if outcome.inserted:
                await self._store.notify_keys([queue_key(INTERNAL_QUEUE)])
            return WorkflowHandle(record.workflow_id, self)

        return await self._on_loop(go())

    def start_sync(
        self,
        workflow_name: str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        return self._blocking(self.start(workflow_name, *args, workflow_id=workflow_id, timeout=timeout, **kwargs))

    async def retrieve(self, workflow_id: str) -> WorkflowHandle:
        if await self._on_loop(self._store.workflow_get(workflow_id)) is None:
            raise WorkflowNotFound(workflow_id)
        return WorkflowHandle(workflow_id, self)

    async def cancel(self, workflow_id: str) -> None:
        """CANCELLED at once; the process running it stops the body at its next durable operation."""
        await self._on_loop(self._store.workflow_cancel(workflow_id))

    async def resume(self, workflow_id: str) -> WorkflowHandle:
        """Queue a CANCELLED/ERROR/RETRIES_EXCEEDED workflow to continue from its last completed step."""

        async def go(workflow_id: str) -> WorkflowHandle:
            existing = await self._store.workflow_get(workflow_id)
            if existing is None:
                raise WorkflowNotFound(workflow_id)
            if existing.status not in RESUMABLE_STATUSES and existing.status not in ("PENDING", "ENQUEUED", "DELAYED"):
                raise ConfigurationError(
                    f"workflow {workflow_id!r} is {existing.status}; only CANCELLED, ERROR or RETRIES_EXCEEDED "
                    "workflows can be resumed (fork() re-runs a finished one)"
                )
            for child_id in await cancelled_with(self._store, existing):
                await go(child_id)  # cancelled along with it: continues along with it
            queue_name = resume_queue(existing) or INTERNAL_QUEUE  # a queued workflow goes back to its queue
            await self._store.workflow_resume(workflow_id, executor_id=None, queue_name=queue_name)
            await self._store.notify_keys([queue_key(queue_name)])
            return WorkflowHandle(workflow_id, self)

        return await self._on_loop(go(workflow_id))

    async def fork(self, workflow_id: str, from_step: int, *, new_workflow_id: str | None = None) -> WorkflowHandle:
        """Queue a new run reusing the checkpoints of positions < `from_step`."""
        if not isinstance(from_step, int) or from_step < 0:
            raise ConfigurationError(f"from_step must be a non-negative integer, got {from_step!r}")
        new_id = new_workflow_id or uuid.uuid4().hex

        async def go() -> WorkflowRecord:
            record = await self._store.workflow_fork(
                workflow_id, new_id, from_step, executor_id=None, queue_name=INTERNAL_QUEUE, app_version=None
            )
            await self._store.notify_keys([queue_key(INTERNAL_QUEUE)])
            return record

        record = await self._on_loop(go())
        return WorkflowHandle(record.workflow_id, self)

    def retrieve_sync(self, workflow_id: str) -> WorkflowHandle:
        return self._blocking(self.retrieve(workflow_id))

    def cancel_sync(self, workflow_id: str) -> None:
        self._blocking(self.cancel(workflow_id))

    def resume_sync(self, workflow_id: str) -> WorkflowHandle:
        return self._blocking(self.resume(workflow_id))

    def fork_sync(self, workflow_id: str, from_step: int, *, new_workflow_id: str | None = None) -> WorkflowHandle:
        return self._blocking(self.fork(workflow_id, from_step, new_workflow_id=new_workflow_id))
