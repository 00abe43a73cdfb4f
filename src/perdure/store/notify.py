"""Wake-ups: a waiter sleeps on a key until something that may concern it changed.

Keys name what changed: `wf:<id>` (a workflow reached a terminal status), later `msg:<id>`, `evt:<id>`,
`stream:<id>`, `queue:<name>`. A store fires keys locally after each write commits, so waiters in the
same process wake at once; PostgreSQL also sends them with NOTIFY to every other process. A store whose
backend cannot notify other processes (SQLite) says so, and waiters there re-check on a short interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


def workflow_key(workflow_id: str) -> str:
    return f"wf:{workflow_id}"


def message_key(workflow_id: str) -> str:
    """A message was sent to the workflow."""
    return f"msg:{workflow_id}"


def event_key(workflow_id: str, key: str) -> str:
    """Event `key` of the workflow was set."""
    return f"evt:{workflow_id}:{key}"


def stream_key(workflow_id: str, key: str) -> str:
    """Stream `key` of the workflow got a value or was closed."""
    return f"stream:{workflow_id}:{key}"


def queue_key(queue_name: str) -> str:
    """Work was put on the queue."""
    return f"queue:{queue_name}"


class Notifier:
    """Futures keyed by what they wait for. Loop-bound: call from the store's event loop."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def fire(self, keys: Iterable[str]) -> None:
        for key in keys:
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)

    def fire_all(self) -> None:
        """Wake every waiter (after notifications may have been missed): each re-checks its condition."""
        self.fire(list(self._waiters))

    async def wait(self, key: str, timeout: float) -> bool:
        """True when woken by `fire(key)`, False when `timeout` passed first."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[key]

    def subscribe(self, keys: list[str]) -> asyncio.Future[None]:
        """A future resolved by the next `fire` of any of `keys`. Subscribe before checking the condition
        a wake-up concerns, so a change between the check and the wait is not missed; `unsubscribe` after."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._waiters.setdefault(key, set()).add(fut)
        return fut

    def unsubscribe(self, keys: list[str], fut: asyncio.Future[None]) -> None:
        for key in keys:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[key]
