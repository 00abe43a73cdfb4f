"""`@scheduled`: run a workflow on a cron schedule, once per tick however many processes run it.

Every launched runtime that declares a schedule fires its ticks. A tick's workflow id is derived from the
schedule's name and the tick's time (`sched:<name>:<UTC time>`), so when several processes fire the same
tick, the first insert wins and the others change nothing: the tick runs once, in the process that
inserted it (or on the schedule's queue). If that process dies, the tick is taken over like any other
workflow. While at least one process runs, no tick is lost.

Cron strings have 5 fields (minute hour day month weekday) or 6 with seconds first
(`"*/10 * * * * *"`: every 10 seconds), and croniter's `@hourly`-style names; times are in the schedule's
`timezone` (IANA name, default UTC; daylight-saving changes follow croniter). `missed` decides what happens
to ticks that passed while no process ran: `"skip"` them (default), run the `"latest"` one, or run `"all"`
(at most 1,000). Schedules are stored in the database: `list_schedules`, `pause_schedule`,
`resume_schedule` and `trigger_schedule` (on `Perdure` and `Client`) act on every process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError
from .store.base import WorkflowRecord, WorkflowStatus, now_ms
from .store.queue_types import ScheduleRecord
from .workflows import WorkflowDef, workflow_def_of

if TYPE_CHECKING:
    from .queues import Queue
    from .runtime import Perdure

F = TypeVar("F", bound=Callable[..., Any])
Missed = Literal["skip", "latest", "all"]
log = logging.getLogger("perdure")

MAX_CATCH_UP = 1000
"""`missed="all"` runs at most this many missed ticks (the latest ones)."""
LATE_GRACE = 10.0
"""Seconds a tick may be late (a busy or suspended process) before it counts as missed."""

_SCHEDULES: dict[str, ScheduleDef] = {}
_SCHEDULES_LOCK = threading.Lock()


def declared_schedules() -> dict[str, ScheduleDef]:
    with _SCHEDULES_LOCK:
        return dict(_SCHEDULES)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"unknown timezone {name!r} (use an IANA name such as 'Europe/Paris')") from exc


def _croniter_class() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - croniter is a dependency
        raise ConfigurationError("@scheduled needs croniter: pip install croniter") from exc
    return croniter


def cron_iter(cron: str, start: datetime) -> Any:
    """A croniter over `cron` from `start` (aware). 6 fields: seconds first."""
    fields = cron.split()
    return _croniter_class()(cron, start, second_at_beginning=len(fields) == 6)


def check_cron(cron: object) -> str:
    """The cron string, or ConfigurationError with the reason it is malformed."""
    if not isinstance(cron, str) or not cron.strip():
        raise ConfigurationError(f"a cron schedule must be a non-empty string, got {cron!r}")
    fields = cron.split()
    if not (len(fields) in (5, 6) or (len(fields) == 1 and fields[0].startswith("@"))):
        raise ConfigurationError(
            f"malformed cron {cron!r}: expected 5 fields (minute hour day month weekday) or 6 with seconds "
            f"first, got {len(fields)}"
        )
    try:
        cron_iter(cron, datetime.now(UTC)).get_next(datetime)
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"malformed cron {cron!r}: {exc}") from None
    return cron


def next_tick(cron: str, timezone: str, after: datetime | None = None) -> datetime | None:
    try:
        start = (after or datetime.now(UTC)).astimezone(zone(timezone))
        nxt: datetime = cron_iter(cron, start).get_next(datetime)
        return nxt
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class ScheduleDef:
    name: str
    workflow: WorkflowDef
    cron: str
    timezone: str
    missed: Missed
    queue_name: str | None

    @property
    def settings(self) -> tuple[str, str, str, str, str | None]:
        return (self.workflow.name, self.cron, self.timezone, self.missed, self.queue_name)

    def ticks(self, after: datetime, until: datetime, cap: int) -> list[datetime]:
        """Ticks t with after < t <= until, oldest first (the last `cap` of them)."""
        it = cron_iter(self.cron, (until + timedelta(seconds=1)).astimezone(zone(self.timezone)))
        out: list[datetime] = []
        while len(out) < cap:
            t: datetime = it.get_prev(datetime)
            if t <= after:
                break
            if t <= until:
                out.append(t)
        out.reverse()
        return out

    def tick_id(self, tick: datetime) -> str:
        return f"sched:{self.name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def scheduled(
    cron: str,
    *,
    timezone: str = "UTC",
    missed: Missed = "skip",
    name: str | None = None,
    queue: Queue | None = None,
) -> Callable[[F], F]:
    """Run the decorated `@workflow` at every tick of `cron`; it receives the tick's time (an aware
    datetime in `timezone`) as its one argument. Put `@scheduled(...)` above `@workflow`.

    `name` (default: the workflow's name) identifies the schedule in the database; keep it stable.
    `queue`: put each tick's run on that queue (its limits apply) instead of running it in the process
    that fires the tick. A malformed cron string or timezone is refused here, with the reason.
    """
    check_cron(cron)
    zone(timezone)
    if missed not in ("skip", "latest", "all"):
        raise ConfigurationError(f"missed must be 'skip', 'latest' or 'all', got {missed!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigurationError(f"schedule name must be a non-empty string, got {name!r}")

    def decorate(fn: F) -> F:
        try:
            defn = workflow_def_of(fn)
        except ConfigurationError:
            raise ConfigurationError(
                f"@scheduled needs a workflow: put @scheduled(...) above @workflow on "
                f"{getattr(fn, '__qualname__', fn)!r}"
            ) from None
        try:
            defn.codec.signature.bind(datetime.now(UTC))
        except TypeError:
            raise ConfigurationError(
                f"scheduled workflow {defn.name!r} must take the tick's time as its one argument, "
                f"e.g. `async def {fn.__name__}(scheduled_at: datetime)`"
            ) from None
        sdef = ScheduleDef(name or defn.name, defn, cron, timezone, missed, queue.name if queue is not None else None)
        with _SCHEDULES_LOCK:
            existing = _SCHEDULES.get(sdef.name)
            if existing is not None and existing.settings != sdef.settings:
                raise ConfigurationError(
                    f"two schedules are named {sdef.name!r} with different settings; give one of them name="
                )
            _SCHEDULES[sdef.name] = sdef
        fn.__perdure_schedule__ = sdef  # type: ignore[attr-defined]
        return fn

    return decorate


class Scheduler:
    """Fires the ticks of this process's schedules (run by the runtime's QueueEngine)."""

    def __init__(self, runtime: Perdure, schedules: dict[str, ScheduleDef]) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.schedules = schedules
        self._cursor: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        t = now_ms()
        rows = await self.store.schedule_register(
            [
                ScheduleRecord(d.name, d.workflow.name, d.cron, d.timezone, d.missed, d.queue_name, False, None, t, t)
                for d in self.schedules.values()
            ]
        )
        now = datetime.now(UTC)
        for row in rows:
            d = self.schedules[row.name]
            self._cursor[d.name] = now
            if row.last_tick is not None and d.missed != "skip" and not row.paused:
                last = datetime.fromtimestamp(row.last_tick / 1000, tz=UTC)
                missed = d.ticks(last, now, MAX_CATCH_UP)
                if d.missed == "latest":
                    missed = missed[-1:]
                elif len(missed) >= MAX_CATCH_UP:
                    log.warning("perdure: schedule %r missed many ticks; running the last %d", d.name, MAX_CATCH_UP)
                await asyncio.gather(*(self._fire(d, tick) for tick in missed))  # one commit, or a few
        self._task = asyncio.create_task(self._run(), name="perdure-scheduler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while self._task is not None:
            now = datetime.now(UTC)
            nearest: datetime | None = None
            for d in self.schedules.values():
                try:
                    due = d.ticks(self._cursor[d.name], now, MAX_CATCH_UP)
                    if due:
                        self._cursor[d.name] = due[-1]
                        late = [t for t in due if (now - t).total_seconds() > LATE_GRACE]
                        on_time = due[len(late) :]
                        if d.missed == "skip":
                            late = []
                        elif d.missed == "latest":
                            late = late[-1:]
                        for tick in late + on_time:
                            await self._fire(d, tick)
                    nxt = next_tick(d.cron, d.timezone, self._cursor[d.name])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one schedule's trouble must not stop the others
                    log.warning("perdure: schedule %r: %s", d.name, exc)
                    nxt = None
                if nxt is not None and (nearest is None or nxt < nearest):
                    nearest = nxt
            if nearest is None:
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(max(0.0, (nearest - datetime.now(UTC)).total_seconds()) + 0.001)

    async def _fire(self, d: ScheduleDef, tick: datetime) -> None:
        rt = self.runtime
        t = now_ms()
        queued = d.queue_name is not None
        record = WorkflowRecord(
            workflow_id=d.tick_id(tick),
            name=d.workflow.name,
            status=WorkflowStatus.ENQUEUED if queued else WorkflowStatus.PENDING,
            inputs=d.workflow.codec.dump_args((tick,), {}),
            created_at=t,
            updated_at=t,
            started_at=None if queued else t,
            serializer=d.workflow.codec.serializer,
            executor_id=None if queued else rt.executor_id,
            app_version=rt.app_version,
            queue_name=d.queue_name,
        )
        try:
            inserted = await self.store.schedule_fire(d.name, int(tick.timestamp() * 1000), record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("perdure: could not fire tick %s of schedule %r: %s", tick.isoformat(), d.name, exc)
            return
        if inserted and not queued and rt.launched and not rt._closing:
            rt._dispatch(d.workflow, record, (tick,), {}, recorded={})
