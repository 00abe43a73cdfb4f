"""Events on both stores: latest value wins with history kept, waiting readers, durable reads, fork, Client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

import perdure
from helpers import query, waiting_on
from perdure import Client, NotLaunchedError, Perdure, step, workflow
from perdure.messaging import GET_EVENT_STEP, SET_EVENT_STEP

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    GATES.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


class Progress(BaseModel):
    done: int
    total: int


@step
async def wait_gate(key: str) -> None:
    await gate(key).wait()


@workflow
async def staged() -> str:
    wid = perdure.workflow_id()
    await perdure.set_event("stage", "one")
    await wait_gate(wid)
    await perdure.set_event("stage", "two")
    await perdure.set_event("progress", Progress(done=2, total=2))
    return "done"


@workflow
async def silent() -> str:
    await wait_gate(perdure.workflow_id())
    return "never set anything"


@workflow
async def watcher(target: str) -> Any:
    seen = await perdure.get_event(target, "stage", timeout=10)
    await wait_gate(perdure.workflow_id())
    return seen


@step(max_attempts=3, retry_interval=0)
async def reports(n: int) -> None:
    RUNS["reports"] += 1
    await perdure.set_event("step-progress", {"attempt": RUNS["reports"], "n": n})
    if RUNS["reports"] < 3:
        raise RuntimeError("flaky")


@workflow
async def step_setter() -> None:
    await reports(7)


@workflow
def sync_setter(target: str) -> Any:
    perdure.set_event_sync("sync", {"ok": True})
    return perdure.get_event_sync(target, "sync", timeout=5)


# -- set and get ----------------------------------------------------------------------------------------


async def test_latest_value_wins_and_history_is_kept(app: Perdure) -> None:
    h = await app.start(staged, workflow_id="st")
    assert await perdure.get_event("st", "stage") == "one"
    gate("st").set()
    assert await h.result() == "done"
    assert await perdure.get_event("st", "stage") == "two"
    assert await app.get_event("st", "progress", type=Progress) == Progress(done=2, total=2)
    assert await perdure.get_all_events("st") == {"stage": "two", "progress": {"done": 2, "total": 2}}
    history = await query(app, "SELECT key, value, step_id FROM {s}events WHERE workflow_id = ? ORDER BY seq", "st")
    assert history == [("stage", '"one"', 0), ("stage", '"two"', 2), ("progress", '{"done":2,"total":2}', 3)]
    assert [s.name for s in await app.list_steps("st")] == [SET_EVENT_STEP, "wait_gate", SET_EVENT_STEP, SET_EVENT_STEP]


async def test_get_event_waits_until_it_is_set(app: Perdure) -> None:
    h = await app.start(staged, workflow_id="wait-st")
    reader = asyncio.create_task(perdure.get_event("wait-st", "progress", timeout=10))
    await asyncio.sleep(0)  # the reader is waiting (it would also find the value if it started later)
    assert not reader.done()
    gate("wait-st").set()
    assert await asyncio.wait_for(reader, 5) == {"done": 2, "total": 2}
    await h.result()


async def test_get_event_times_out_with_none(app: Perdure) -> None:
    await app.start(silent, workflow_id="mute")
    assert await perdure.get_event("mute", "anything", timeout=0.05) is None
    assert await perdure.get_event("mute", "anything", timeout=0) is None
    gate("mute").set()


async def test_get_event_ends_when_the_workflow_finished_without_it(app: Perdure) -> None:
    h = await app.start(silent, workflow_id="ended")
    reader = asyncio.create_task(perdure.get_event("ended", "never", timeout=60))
    gate("ended").set()
    await h.result()
    assert await asyncio.wait_for(reader, 5) is None


async def test_get_event_inside_a_workflow_is_checkpointed(app: Perdure) -> None:
    target = await app.start(staged, workflow_id="tgt")
    w = await app.start(watcher, "tgt", workflow_id="watch")
    gate("tgt").set()
    await target.result()
    gate("watch").set()
    assert await w.result() == "one"
    got, _ = await app.list_steps("watch")
    assert (got.name, got.status, got.output) == (GET_EVENT_STEP, "SUCCESS", '"one"')
    # A replay sees what the first run saw, not the event's value now ("two").
    gate("watch-fork").set()
    forked = await app.fork("watch", 1, new_workflow_id="watch-fork")
    assert await forked.result() == "one"


@workflow
async def late_watcher(target: str) -> Any:
    return await perdure.get_event(target, "stage", timeout=10)


async def test_get_event_inside_a_workflow_waits_durably(app: Perdure) -> None:
    waiting = waiting_on(app, "evt:late-target:stage")
    w = await app.start(late_watcher, "late-target", workflow_id="late-watch")
    await asyncio.wait_for(waiting.wait(), 5)
    # The watcher's checkpoint shows the wait under way, with its deadline.
    steps = await app.list_steps("late-watch")
    assert (steps[0].name, steps[0].status) == (GET_EVENT_STEP, "WAITING")
    target = await app.start(staged, workflow_id="late-target")
    assert await w.result() == "one"
    (got,) = await app.list_steps("late-watch")
    assert (got.status, got.output, got.started_at) == ("SUCCESS", '"one"', steps[0].started_at)
    gate("late-target").set()
    await target.result()


async def test_events_written_in_a_retried_step_are_not_duplicated(app: Perdure) -> None:
    h = await app.start(step_setter, workflow_id="retried")
    await h.result()
    assert RUNS["reports"] == 3
    assert await perdure.get_event("retried", "step-progress") == {"attempt": 3, "n": 7}
    rows = await query(app, "SELECT step_id, sub, value FROM {s}events WHERE workflow_id = ?", "retried")
    # Every attempt wrote write number 1 of the step at position 0: one row, the last attempt's value.
    assert rows == [(0, 1, '{"attempt":3,"n":7}')]


async def test_sync_workflows_and_threads(app: Perdure) -> None:
    h = await app.start(sync_setter, "sync-ev", workflow_id="sync-ev")
    assert await h.result() == {"ok": True}
    assert await asyncio.to_thread(perdure.get_event_sync, "sync-ev", "sync") == {"ok": True}
    assert await asyncio.to_thread(perdure.get_all_events_sync, "sync-ev") == {"sync": {"ok": True}}


async def test_set_event_is_only_for_workflows(app: Perdure) -> None:
    with pytest.raises(NotLaunchedError):
        await perdure.set_event("k", 1)


async def test_fork_copies_events_recorded_before_the_fork_point(app: Perdure) -> None:
    h = await app.start(staged, workflow_id="orig")
    gate("orig").set()
    await h.result()
    forked = await app.fork("orig", 1, new_workflow_id="copy")
    # The copy waits in its step at position 1 and has the events of position 0 only.
    assert await perdure.get_event("copy", "stage", timeout=0) == "one"
    assert await perdure.get_all_events("copy") == {"stage": "one"}
    gate("copy").set()
    assert await forked.result() == "done"
    assert await perdure.get_event("copy", "stage") == "two"
    assert await perdure.get_event("orig", "stage") == "two"


async def test_a_client_reads_events(app: Perdure, db_url: str) -> None:
    h = await app.start(staged, workflow_id="cl")
    async with Client(db_url) as client:
        assert await client.get_event("cl", "stage") == "one"
        reader = asyncio.create_task(client.get_event("cl", "stage-never", timeout=0.05))
        assert await reader is None
        gate("cl").set()
        await h.result()
        assert await client.get_all_events("cl") == {"stage": "two", "progress": {"done": 2, "total": 2}}
        assert await client.get_event("cl", "progress", type=Progress) == Progress(done=2, total=2)


def test_events_are_visible_from_a_client_in_another_process(db_url: str) -> None:
    program = textwrap.dedent(
        """
        import sys
        from perdure import Client
        with Client(sys.argv[1]) as client:
            print(client.get_event_sync(sys.argv[2], "stage", timeout=30))
            print(client.get_all_events_sync(sys.argv[2]))
        """
    )

    @workflow(name="events.remote")
    def remote() -> str:
        perdure.set_event_sync("stage", "visible")
        return "ok"

    with Perdure(db_url) as app:
        reader = subprocess.Popen(
            [sys.executable, "-c", program, db_url, "remote-ev"], stdout=subprocess.PIPE, text=True
        )
        assert app.start_sync(remote, workflow_id="remote-ev").result_sync() == "ok"
        out, _ = reader.communicate(timeout=60)
    assert out.split("\n")[:2] == ["visible", "{'stage': 'visible'}"]
