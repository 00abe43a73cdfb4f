"""Durable waiting inside workflows: `sleep` (messages, events and streams build on the same positions)."""

from __future__ import annotations

import asyncio
import time

from . import _context
from .errors import ConfigurationError
from .store.base import now_ms

SLEEP_STEP = "perdure.sleep"


def _wake_time(ctx: _context.WorkflowContext, seconds: float) -> tuple[int, int, bool]:
    """(position, wake-up time in ms, whether it still has to be recorded)."""
    if seconds < 0:
        raise ConfigurationError(f"sleep seconds must not be negative, got {seconds}")
    pos, rec = ctx.take_position()
    if rec is not None:
        ctx.check_replay(pos, rec, SLEEP_STEP, None)
        return pos, int(rec.output or 0), False
    return pos, now_ms() + int(seconds * 1000), True


async def sleep(seconds: float) -> None:
    """Sleep durably: the wake-up time is checkpointed, so after a restart only the rest is slept.

    An async workflow holds no thread while it sleeps; a cancel ends the sleep at once.
    """
    ctx = _context.require("perdure.sleep()")
    pos, wake_at, fresh = _wake_time(ctx, seconds)
    if fresh:
        await ctx.record(ctx.step_record(pos, SLEEP_STEP, output=str(wake_at)))
    remaining = (wake_at - now_ms()) / 1000
    if remaining > 0:
        await asyncio.sleep(remaining)
    ctx.raise_if_cancelled()


def sleep_sync(seconds: float) -> None:
    """`sleep` for sync workflows (the workflow's thread waits; a cancel wakes it)."""
    ctx = _context.require("perdure.sleep_sync()")
    if ctx.on_loop_thread():
        raise ConfigurationError("perdure.sleep_sync() is for sync workflows; use `await perdure.sleep()`")
    pos, wake_at, fresh = _wake_time(ctx, seconds)
    if fresh:
        ctx.blocking(ctx.record(ctx.step_record(pos, SLEEP_STEP, output=str(wake_at))))
    while True:
        remaining = (wake_at - now_ms()) / 1000
        if remaining <= 0:
            break
        ctx.wakeup.wait(remaining)
        ctx.raise_if_cancelled()
        if not ctx.wakeup.is_set():
            time.sleep(0)
    ctx.raise_if_cancelled()
