"""Group commit: concurrent writes of one event loop share one transaction.

Every write is queued with a future; a flush is scheduled with `call_soon`, so all workflows that become
ready in the same loop iteration add their checkpoint before the flush runs. The flush executes the whole
batch in one transaction and only then resolves the futures: a step is never acknowledged before its
commit. A backend supplies `run_batch(ops)` that executes and commits, raising `Busy` when the database
is locked by another process (the batch is then retried with backoff without blocking the loop).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Generic, TypeVar

C = TypeVar("C")

log = logging.getLogger("perdure.store")


class Busy(Exception):
    """The database is locked by someone else right now; try the batch again shortly."""


class WriteOp(Generic[C]):
    """One queued write: `fn(conn)` runs inside the batch transaction.

    `single`: the op's first statement is its only write, and it reads nothing before that commits, so a
    backend may run it (or a batch of such ops) without an explicit BEGIN and COMMIT.
    """

    __slots__ = ("atomic", "fn", "future", "single")

    def __init__(self, fn: Callable[[C], Any], future: asyncio.Future[Any], atomic: bool, single: bool = False) -> None:
        self.fn = fn
        self.future = future
        self.atomic = atomic
        self.single = single


class GroupCommitter(Generic[C]):
    def __init__(self, run_batch: Callable[[list[WriteOp[C]]], None], *, max_batch: int = 512) -> None:
        self._run_batch = run_batch
        self._pending: list[WriteOp[C]] = []
        self._scheduled = False
        self._backoff = 0.0
        self._max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: asyncio.TimerHandle | None = None

    def submit(
        self, fn: Callable[[C], Any], *, atomic: bool = False, single: bool = False, hold: float = 0.0
    ) -> asyncio.Future[Any]:
        """Queue one write. `hold`: seconds it may wait for another write to share its commit."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a perdure store is bound to the event loop that opened it")
        fut: asyncio.Future[Any] = loop.create_future()
        op = WriteOp(fn, fut, atomic, single)
        if self._held is not None:
            # A held write was waiting for company, and this is it: both are committed as one batch below.
            self._held.cancel()
            self._held = None
            self._scheduled = False
        elif hold > 0 and not self._scheduled and not self._backoff:
            self._pending.append(op)
            self._scheduled = True
            self._held = loop.call_later(hold, self._flush)
            return fut
        self._pending.append(op)
        if not self._scheduled:
            if not self._backoff and not getattr(loop, "_ready", True):
                # Nothing else is ready to run, so no other write can join this batch: commit now
                # instead of a loop turn later. (Only where the loop exposes its ready queue.)
                self._flush()
            else:
                self._scheduled = True
                loop.call_soon(self._flush)
        return fut

    def _retry_later(self) -> None:
        self._backoff = min(max(self._backoff * 2, 0.0005), 0.05)
        assert self._loop is not None
        self._scheduled = True
        self._loop.call_later(self._backoff * random.uniform(0.5, 1.5), self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._held = None
        if not self._pending:
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        try:
            self._run_batch(batch)
        except Busy:
            self._pending[:0] = batch
            self._retry_later()
            return
        except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
            log.error("perdure: a write batch failed to commit: %s", exc)
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(exc)
        self._backoff = 0.0
        if self._pending and not self._scheduled:
            assert self._loop is not None
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def fail_pending(self, exc: BaseException) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
            self._scheduled = False
        pending, self._pending = self._pending, []
        for op in pending:
            if not op.future.done():
                op.future.set_exception(exc)


class AsyncGroupCommitter(Generic[C]):
    """Group commit for a backend whose batch runs asynchronously (one batch in flight at a time).

    While a batch is committing, new writes gather; the next batch takes all of them.
    `run_batch(ops)` executes and commits the ops and resolves their futures.
    """

    def __init__(self, run_batch: Callable[[list[WriteOp[C]]], Any], *, max_batch: int = 512) -> None:
        self._run_batch = run_batch
        self._pending: list[WriteOp[C]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._company: asyncio.Event | None = None
        self._max_batch = max_batch

    def submit(
        self, fn: Callable[[C], Any], *, atomic: bool = False, single: bool = False, hold: float = 0.0
    ) -> asyncio.Future[Any]:
        """Queue one write. `hold`: seconds it may wait for another write to share its commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append(WriteOp(fn, fut, atomic, single))
        if self._flusher is None:
            # The event exists from here on, not from when the flusher task first runs: a write that
            # arrives before then (queued in this same loop turn) is company too.
            self._company = asyncio.Event() if hold > 0 else None
            self._flusher = loop.create_task(self._flush(hold))
        elif self._company is not None:
            self._company.set()  # a held write was waiting for company, and this is it
        return fut

    async def _flush(self, hold: float = 0.0) -> None:
        try:
            company = self._company
            if company is not None:
                try:
                    if not company.is_set():
                        async with asyncio.timeout(hold):
                            await company.wait()
                except TimeoutError:
                    pass
                finally:
                    self._company = None
            await asyncio.sleep(0)  # let every writer that is ready in this loop iteration join the batch
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    await self._run_batch(batch)
                except BaseException as exc:
                    for op in batch:
                        if not op.future.done():
                            op.future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None

    def fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, []
        for op in pending:
            if not op.future.done():
                op.future.set_exception(exc)
        if self._flusher is not None:
            # A flusher cancelled before it first ran never reaches its `finally`: forget it here, or
            # every write after the store is opened again would wait for it forever.
            self._flusher.cancel()
            self._flusher = None
            self._company = None
