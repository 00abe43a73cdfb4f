"""Replay safety: NonDeterminismError, perdure.patched, recorded now()/uuid4(), durable sleep."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

import perdure
from perdure import ConfigurationError, NonDeterminismError, Perdure, WorkflowCancelled, WorkflowStatus, step, workflow
from perdure.store.base import now_ms

RUNS: Counter[str] = Counter()
MODE: dict[str, str] = {}
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    MODE.clear()
    GATES.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


@step
async def tagged(tag: str) -> str:
    RUNS[tag] += 1
    return tag


@step
async def renamed(tag: str) -> str:
    RUNS[f"renamed:{tag}"] += 1
    return tag


@workflow
async def branching() -> list[str]:
    out = [await tagged("first")]
    variant = MODE.get("variant", "original")
    if variant == "rename":
        out.append(await renamed("second"))
    elif variant == "args":
        out.append(await tagged("SECOND"))
    else:
        out.append(await tagged("second"))
    out.append(await tagged("third"))
    return out


def step_rows(sqlite_path: str, workflow_id: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(sqlite_path) as conn:
        return conn.execute(
            "SELECT step_id, name, args_hash, output, error, child_id, attempts, started_at, completed_at "
            "FROM steps WHERE workflow_id = ? ORDER BY step_id",
            (workflow_id,),
        ).fetchall()


def snapshot(steps: list[perdure.StepInfo]) -> list[tuple[object, ...]]:
    return [(s.step_id, s.name, s.status, s.output, s.error, s.attempts, s.started_at, s.completed_at) for s in steps]


@pytest.mark.parametrize(
    ("variant", "current", "detail"),
    [("rename", "'renamed'", ""), ("args", "'tagged'", "different arguments")],
)
async def test_replay_meeting_different_code_raises_and_overwrites_nothing(
    app: Perdure, variant: str, current: str, detail: str
) -> None:
    h = await app.start(branching, workflow_id="orig")
    assert await h.result() == ["first", "second", "third"]
    before = snapshot(await app.list_steps("orig"))
    runs_before = Counter(RUNS)

    MODE["variant"] = variant
    fork = await app.fork("orig", from_step=3)
    with pytest.raises(NonDeterminismError) as info:
        await fork.result()
    err = info.value
    assert err.step_id == 1
    assert err.workflow_id == fork.workflow_id
    assert err.recorded == "'tagged'"
    assert err.current == current
    assert "'tagged'" in str(err) and current in str(err) and detail in str(err)

    assert runs_before == RUNS  # nothing ran: not the new step, not the ones after it
    fork_info = await app.get_workflow(fork.workflow_id)
    assert fork_info.status == WorkflowStatus.ERROR
    assert fork_info.error is not None and fork_info.error.startswith("NonDeterminismError")
    # The copied checkpoints are untouched, and so is the original.
    assert snapshot(await app.list_steps(fork.workflow_id)) == before
    assert snapshot(await app.list_steps("orig")) == before

    # Put the old code back: the same workflow resumes from its intact history.
    MODE["variant"] = "original"
    resumed = await app.resume(fork.workflow_id)
    assert await resumed.result() == ["first", "second", "third"]
    assert runs_before == RUNS


async def test_nondeterminism_leaves_raw_rows_identical(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        await (await app.start(branching, workflow_id="orig")).result()
        fork = await app.fork("orig", from_step=3, new_workflow_id="forked")
        await fork.result()
        copied = step_rows(path, "forked")
        MODE["variant"] = "args"
        resumed_fork = await app.fork("forked", from_step=3, new_workflow_id="forked2")
        with pytest.raises(NonDeterminismError):
            await resumed_fork.result()
    assert step_rows(path, "forked2") == copied
    assert step_rows(path, "orig") == copied


# -- perdure.patched ------------------------------------------------------------------------------------


@workflow
async def evolving() -> list[object]:
    out: list[object] = [await tagged("start")]
    if MODE.get("patch") == "on":
        new_path = await perdure.patched("use-new-path")
        out.append(new_path)
        out.append(await tagged("new") if new_path else await tagged("old"))
    else:
        out.append(await tagged("old"))
    out.append(await tagged("end"))
    return out


async def test_patched_is_true_on_fresh_runs_and_false_when_replaying_older_history(app: Perdure) -> None:
    # History recorded before the patch existed.
    old = await app.start(evolving, workflow_id="before-patch")
    assert await old.result() == ["start", "old", "end"]

    MODE["patch"] = "on"
    fresh = await app.start(evolving, workflow_id="fresh")
    assert await fresh.result() == ["start", True, "new", "end"]
    assert [s.name for s in await app.list_steps("fresh")] == [
        "tagged",
        "perdure.patch:use-new-path",
        "tagged",
        "tagged",
    ]

    # Replaying the old history: patched() says False and the old path replays cleanly.
    replay_old = await app.fork("before-patch", from_step=3)
    assert await replay_old.result() == ["start", False, "old", "end"]
    assert [s.name for s in await app.list_steps(replay_old.workflow_id)] == ["tagged", "tagged", "tagged"]

    # A run that had not yet reached the patch when the code changed takes the new path.
    reached_start_only = await app.fork("before-patch", from_step=1)
    assert await reached_start_only.result() == ["start", True, "new", "end"]

    # A run that recorded the patch marker replays it as True.
    replay_new = await app.fork("fresh", from_step=4)
    assert await replay_new.result() == ["start", True, "new", "end"]

    assert RUNS["start"] == 2  # "before-patch" and "fresh"; every fork replayed it
    assert RUNS["old"] == 1
    assert RUNS["new"] == 2  # "fresh" and the fork from before the patch point


async def test_patched_outside_a_workflow_is_an_error() -> None:
    with pytest.raises(perdure.NotLaunchedError):
        await perdure.patched("x")


# -- recorded values ------------------------------------------------------------------------------------


@workflow
async def stamps() -> tuple[datetime, uuid.UUID, str]:
    t = await perdure.now()
    u = await perdure.uuid4()
    return t, u, await tagged("after")


async def test_now_and_uuid4_are_recorded_and_replayed(app: Perdure) -> None:
    before = datetime.now(UTC)
    h = await app.start(stamps, workflow_id="st")
    t, u, _ = await h.result()
    assert before <= t <= datetime.now(UTC)
    assert t.tzinfo is not None
    assert isinstance(u, uuid.UUID) and u.version == 4
    steps = await app.list_steps("st")
    assert [s.name for s in steps] == ["perdure.now", "perdure.uuid4", "tagged"]
    assert str(u) in (steps[1].output or "")

    replay = await app.fork("st", from_step=3)
    assert await replay.result() == (t, u, "after")
    assert RUNS["after"] == 1
    # Typed when read back from the database, too.
    stored = await (await app.retrieve(replay.workflow_id)).result()
    assert stored == (t, u, "after")
    assert isinstance(stored[0], datetime) and isinstance(stored[1], uuid.UUID)

    fresh_values = await app.fork("st", from_step=1)
    t2, u2, _ = await fresh_values.result()
    assert t2 == t
    assert u2 != u


async def test_recorded_values_outside_a_workflow_are_an_error() -> None:
    with pytest.raises(perdure.NotLaunchedError):
        await perdure.now()
    with pytest.raises(perdure.NotLaunchedError):
        await perdure.uuid4()


# -- durable sleep --------------------------------------------------------------------------------------


@workflow
async def sleeper(seconds: float) -> str:
    await tagged("before-sleep")
    await perdure.sleep(seconds)
    return await tagged("after-sleep")


async def test_sleep_records_its_wake_time_and_a_replay_does_not_sleep_again(app: Perdure) -> None:
    t0 = now_ms()
    h = await app.start(sleeper, 0.5, workflow_id="sl")
    assert await h.result() == "after-sleep"
    assert now_ms() - t0 >= 500
    steps = await app.list_steps("sl")
    assert [s.name for s in steps] == ["tagged", "perdure.sleep", "tagged"]
    wake_at = int(steps[1].output or 0)
    assert t0 + 500 <= wake_at <= now_ms()

    started = time.monotonic()
    replay = await app.fork("sl", from_step=2)
    assert await replay.result() == "after-sleep"
    assert time.monotonic() - started < 0.4  # the recorded wake time has passed: no new 0.5 s sleep
    assert [s.output for s in await app.list_steps(replay.workflow_id)][1] == str(wake_at)
    assert RUNS["before-sleep"] == 1
    assert RUNS["after-sleep"] == 2

    # From before the sleep, the sleep is a fresh one again.
    started = time.monotonic()
    again = await app.fork("sl", from_step=1)
    assert await again.result() == "after-sleep"
    assert time.monotonic() - started >= 0.5


async def wait_for_steps(app: Perdure, workflow_id: str, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(await app.list_steps(workflow_id)) < count:
        assert time.monotonic() < deadline, f"{workflow_id} never recorded {count} steps"
        await asyncio.sleep(0.01)


async def test_resumed_sleep_waits_only_until_the_stored_wake_time(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        started = time.monotonic()
        h = await app.start(sleeper, 5.0, workflow_id="long")
        await wait_for_steps(app, "long", 2)
        await app.cancel("long")
        assert (await app.get_workflow("long")).status == WorkflowStatus.CANCELLED
        with pytest.raises(WorkflowCancelled):
            await asyncio.wait_for(h.result(), 2)
        assert time.monotonic() - started < 4  # the cancel ended the 5 s sleep

        # Stored wake time decides the rest of the sleep: pull it near, and the resumed run ends soon.
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE steps SET output = ? WHERE workflow_id = 'long' AND name = 'perdure.sleep'",
                (str(now_ms() + 100),),
            )
        resumed_at = time.monotonic()
        resumed = await app.resume("long")
        assert await asyncio.wait_for(resumed.result(), 3) == "after-sleep"
        elapsed = time.monotonic() - resumed_at
        assert 0.05 <= elapsed < 3
    assert RUNS["before-sleep"] == 1
    assert RUNS["after-sleep"] == 1


@workflow
async def bad_sleeper() -> None:
    await perdure.sleep(-1)


async def test_sleep_misuse(app: Perdure) -> None:
    with pytest.raises(perdure.NotLaunchedError):
        await perdure.sleep(0.01)
    with pytest.raises(ConfigurationError, match="negative"):
        await (await app.start(bad_sleeper)).result()


@workflow
async def quiet_sleeper(i: int) -> int:
    await perdure.sleep(30)
    return i


async def test_sleeping_async_workflows_hold_no_threads(app: Perdure) -> None:
    before = threading.active_count()
    handles = [await app.start(quiet_sleeper, i) for i in range(30)]
    for h in handles:
        await wait_for_steps(app, h.workflow_id, 1)
    assert threading.active_count() <= before + 2
    for h in handles:
        await app.cancel(h.workflow_id)
    for h in handles:
        with pytest.raises(WorkflowCancelled):
            await asyncio.wait_for(h.result(), 5)
