"""Human in the loop, durably: pydantic-ai's external-event waits backed by perdure messages.

Inside a durable run, `wait_for_external_event` (and so `RequestInput` and deferred-tool approvals)
records a resume token, calls `ask` once inside a step, and, unless `ask` answered, waits for the
token's message with `perdure.recv` — for days if need be, across restarts, without asking again on
replay. Anyone resolves the token with `resolve(workflow_id, token, payload)` (or `fail(...)`), from
this process or, with a `Client`, from any other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

from pydantic import JsonValue
from pydantic_ai.external_events import ExternalEventError, ExternalEventWaiter

from .. import _context
from ..client import Client
from ..messaging import recv, send
from ..workflows import durable_call, record_value

TOPIC_PREFIX = "perdure.external_event:"


def event_topic(token: str) -> str:
    return f"{TOPIC_PREFIX}{token}"


class PerdureEventWaiter(ExternalEventWaiter):
    """Installed by `PerdureDurability` for every durable run."""

    def __init__(self, agent_name: str) -> None:
        self.agent_name = agent_name

    async def wait(
        self,
        name: str,
        *,
        ask: Callable[[str], Awaitable[JsonValue]],
        timeout: timedelta | None,
    ) -> JsonValue:
        ctx = _context.require("a durable external-event wait")
        prefix = f"{self.agent_name}__external_event.{name}"
        token = await record_value(
            f"{prefix}.token", lambda: f"{ctx.workflow_id}/{uuid.uuid4().hex}", json.dumps, json.loads
        )
        answered = await durable_call(f"{prefix}.ask", lambda: ask(token))
        if answered is not None:
            return cast(JsonValue, answered)
        seconds = None if timeout is None else timeout.total_seconds()
        message = await recv(event_topic(token), timeout=seconds)
        if message is None:
            raise ExternalEventError(f"no answer to {name!r} within {timeout}")
        if not isinstance(message, dict) or "ok" not in message:
            raise ExternalEventError(f"the answer to {name!r} is not a perdure resolution: {message!r}")
        if not message["ok"]:
            raise ExternalEventError(str(message.get("reason") or "the wait was failed"))
        return cast(JsonValue, message.get("payload"))


def _workflow_of(token: str) -> str:
    workflow_id, sep, _ = token.rpartition("/")
    if not sep or not workflow_id:
        raise ValueError(f"not a perdure resume token: {token!r}")
    return workflow_id


async def resolve(token: str, payload: Any, *, client: Client | None = None) -> None:
    """Answer the wait that handed out `token` with `payload` (JSON-ready, e.g. DeferredToolResults' JSON).

    Without `client`, the launched runtime of this process sends it; with one, any process can.
    Sending twice is harmless: the second answer is keyed like the first and is dropped.
    """
    await _deliver(token, {"ok": True, "payload": payload}, client)


async def fail(token: str, reason: str, *, client: Client | None = None) -> None:
    """End the wait that handed out `token` without an answer (`RequestInput` then denies the calls)."""
    await _deliver(token, {"ok": False, "reason": reason}, client)


async def _deliver(token: str, message: dict[str, Any], client: Client | None) -> None:
    workflow_id = _workflow_of(token)
    if client is not None:
        await client.send(workflow_id, message, event_topic(token), idempotency_key=f"resolve:{token}")
    else:
        await send(workflow_id, message, event_topic(token), idempotency_key=f"resolve:{token}")
