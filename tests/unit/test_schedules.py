"""Cron schedules in one process, on SQLite and PostgreSQL: validation, ticks, missed ticks, pause/resume/trigger.

The multi-process guarantee (once per tick across processes, a killed process loses no tick) is tested in
tests/crash/test_queue_processes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from perdure import Client, ConfigurationError, Perdure, Queue, WorkflowStatus, scheduled, workflow
from perdure import schedules as schedules_module
from perdure.store import create_store
from perdure.store.queue_types import ScheduleRecord

SEEN: list[datetime] = []


@pytest.fixture(autouse=True)
def _isolated_schedules() -> Iterator[None]:
    """Schedules declared by a test stay in that test (every runtime of the process fires the declared ones)."""
    saved = dict(schedules_module._SCHEDULES)
    SEEN.clear()
    yield
    schedules_module._SCHEDULES.clear()
    schedules_module._SCHEDULES.update(saved)


@workflow(name="s.tick")
async def tick(scheduled_at: datetime) -> str:
    SEEN.append(scheduled_at)
    return scheduled_at.isoformat()


@workflow(name="s.no_args")
async def no_args() -> None:
    return None


def ticks_of(rows: list[object], name: str) -> list[datetime]:
    prefix = f"sched:{name}:"
    out = []
    for r in rows:
        wid: str = r.workflow_id  # type: ignore[attr-defined]
        if wid.startswith(prefix) and ":manual:" not in wid:
            out.append(datetime.strptime(wid[len(prefix) :], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC))
    return sorted(out)


async def until(what: str, check: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():  # type: ignore[operator]
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


# -- declaring -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "match"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "expected 5 fields"),
        ("* * * * * * * *", "expected 5 fields"),
        ("*/0 * * * *", "malformed cron"),
        ("", "non-empty string"),
        ("@fortnightly", "malformed cron"),
    ],
)
def test_malformed_cron_is_refused_with_the_reason(cron: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        scheduled(cron)


def test_other_bad_declarations_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown timezone"):
        scheduled("* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="missed must be"):
        scheduled("* * * * *", missed="some")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="above @workflow"):
        scheduled("* * * * *")(print)
    with pytest.raises(ConfigurationError, match="must take the tick's time"):
        scheduled("* * * * *")(no_args)
    scheduled("*/5 * * * *", name="s.dup")(tick)
    scheduled("*/5 * * * *", name="s.dup")(tick)  # the same declaration twice is fine
    with pytest.raises(ConfigurationError, match="two schedules are named"):
        scheduled("*/6 * * * *", name="s.dup")(tick)


def test_five_and_six_field_crons_and_timezones() -> None:
    start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    five = schedules_module.next_tick("30 2 * * *", "Europe/Paris", start)
    assert five is not None and five.utcoffset() == timedelta(hours=2)  # 02:30 does not exist that night
    six = schedules_module.next_tick("*/10 * * * * *", "UTC", start)
    assert six == start + timedelta(seconds=10)  # six fields: seconds first
    assert schedules_module.next_tick("@hourly", "UTC", start) == start + timedelta(hours=1)


# -- running -----------------------------------------------------------------------------------------------


async def test_ticks_run_once_each_with_their_time_then_pause_trigger_resume(db_url: str) -> None:
    scheduled("* * * * * *", timezone="Europe/Paris", name="s.every-second")(tick)
    async with Perdure(db_url, maintenance_interval=0.05) as app:
        await until("two ticks ran", lambda: _count_success(app, "s.every-second", 2))
        rows = await app.list_workflows(name="s.tick")
        assert all(r.status == WorkflowStatus.SUCCESS for r in rows)
        ticks = ticks_of(rows, "s.every-second")
        assert len(ticks) == len(set(ticks)) >= 2
        assert all(t.microsecond == 0 for t in SEEN) and {t.astimezone(UTC) for t in SEEN} == set(ticks)
        assert all(t.tzinfo == ZoneInfo("Europe/Paris") for t in SEEN)

        await app.pause_schedule("s.every-second")
        paused_at = datetime.now(UTC)
        [info] = await app.list_schedules()
        assert info.paused and info.next_tick is None and info.cron == "* * * * * *"
        assert info.last_tick is not None and info.last_tick <= paused_at
        triggered = await app.trigger_schedule("s.every-second")  # runs now, even while paused
        assert datetime.fromisoformat(await triggered.result(timeout=10)) >= paused_at - timedelta(seconds=1)
        await asyncio.sleep(1.2)  # a whole period passes while paused: no tick may fire in it
        late = [t for t in ticks_of(await app.list_workflows(name="s.tick"), "s.every-second") if t > paused_at]
        assert late == []

        async with Client(db_url) as client:  # management works from another process too
            await client.resume_schedule("s.every-second")
            assert not (await client.list_schedules())[0].paused
        await until("a tick after resuming", lambda: _count_success(app, "s.every-second", len(ticks) + 1))
        with pytest.raises(ConfigurationError, match="no schedule named"):
            await app.pause_schedule("nope")


async def _count_success(app: Perdure, name: str, n: int) -> bool:
    rows = await app.list_workflows(name="s.tick", status="SUCCESS", limit=None)
    return len(ticks_of(rows, name)) >= n


@pytest.mark.parametrize("missed", ["skip", "latest", "all"])
async def test_missed_ticks_while_everything_was_down(db_url: str, missed: str) -> None:
    name = f"s.missed-{missed}"
    down_since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    store = create_store(db_url)  # the schedule's last tick, as a runtime that died 5 s ago left it
    await store.open()
    t = int(down_since.timestamp() * 1000)
    await store.schedule_register([ScheduleRecord(name, "s.tick", "* * * * * *", "UTC", missed, None, False, t, t, t)])
    await store.close()
    scheduled("* * * * * *", name=name, missed=missed)(tick)  # type: ignore[arg-type]
    launched = datetime.now(UTC)
    async with Perdure(db_url, maintenance_interval=0.05) as app:
        rows = await app.list_workflows(name="s.tick", limit=None)  # catch-up happens during launch
        caught_up = [x for x in ticks_of(rows, name) if x <= launched]
        expected_all = [down_since + timedelta(seconds=i) for i in range(1, 6)]
        if missed == "skip":
            assert caught_up == []
        elif missed == "latest":
            assert caught_up == [launched.replace(microsecond=0)]
        else:
            assert caught_up[:5] == expected_all and caught_up[-1] == launched.replace(microsecond=0)
        for wid in [f"sched:{name}:{x.strftime('%Y-%m-%dT%H:%M:%SZ')}" for x in caught_up]:
            await (await app.retrieve(wid)).result(timeout=10)


async def test_a_schedule_can_put_its_ticks_on_a_queue(db_url: str) -> None:
    q = Queue("t-sched-queue", concurrency=1)
    scheduled("* * * * * *", name="s.queued", queue=q)(tick)
    async with Perdure(db_url, maintenance_interval=0.05) as app:
        await until("a queued tick ran", lambda: _count_success(app, "s.queued", 1))
        rows = [r for r in await app.list_workflows(name="s.tick", limit=None) if r.workflow_id.startswith("sched:")]
        assert {r.queue_name for r in rows} == {"t-sched-queue"}
        assert (await app.list_schedules())[0].queue_name == "t-sched-queue"
