"""`Store.workflow_finish(..., steps=...)`: a run's last checkpoints and its outcome in one transaction.

On both stores: they share one commit; a refused outcome writes none of them; written again (a retry
after a lost answer) it answers "ok"; a position that holds another operation answers "conflict", and
the outcome is not written. PostgreSQL has a statement for each NOTIFY setting (on by default); the
last test runs the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpers import pending_workflow
from perdure.store import create_store
from perdure.store.base import StepRecord, Store, now_ms

EXECUTOR = "ex-finish"


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = create_store(db_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def running(store: Store, workflow_id: str) -> None:
    assert (await store.workflow_insert(pending_workflow(workflow_id, "finish", executor_id=EXECUTOR))).inserted


def step(workflow_id: str, position: int, name: str) -> StepRecord:
    t = now_ms()
    return StepRecord(
        workflow_id=workflow_id, step_id=position, name=name, output=f'"{name}"', started_at=t, completed_at=t
    )


async def test_the_last_checkpoints_share_the_commit_of_the_outcome(store: Store) -> None:
    await running(store, "fin-1")
    before = store.stats.commits
    steps = [step("fin-1", 0, "a"), step("fin-1", 1, "b")]
    assert await store.workflow_finish("fin-1", EXECUTOR, "SUCCESS", '"done"', None, steps=steps) == "ok"
    assert store.stats.commits - before == 1
    assert [(s.step_id, s.name, s.output) for s in await store.step_list("fin-1")] == [(0, "a", '"a"'), (1, "b", '"b"')]
    finished = await store.workflow_get("fin-1")
    assert finished is not None and finished.status == "SUCCESS" and finished.output == '"done"'


async def test_a_refused_outcome_writes_none_of_its_checkpoints(store: Store) -> None:
    await running(store, "fin-cancelled")
    await store.workflow_cancel("fin-cancelled")
    outcome = await store.workflow_finish(
        "fin-cancelled", EXECUTOR, "SUCCESS", '"done"', None, steps=[step("fin-cancelled", 0, "a")]
    )
    assert outcome == "cancelled"
    assert await store.step_list("fin-cancelled") == []

    await running(store, "fin-elsewhere")
    outcome = await store.workflow_finish(
        "fin-elsewhere", "another-executor", "SUCCESS", '"done"', None, steps=[step("fin-elsewhere", 0, "a")]
    )
    assert outcome == "not_owner"
    assert await store.step_list("fin-elsewhere") == []
    pending = await store.workflow_get("fin-elsewhere")
    assert pending is not None and pending.status == "PENDING"


async def test_an_outcome_written_again_with_its_checkpoints_answers_ok(store: Store) -> None:
    # A batch retried after its commit's answer was lost finds everything written already.
    await running(store, "fin-again")
    steps = [step("fin-again", 0, "a")]
    for _ in range(2):
        assert await store.workflow_finish("fin-again", EXECUTOR, "SUCCESS", '"done"', None, steps=steps) == "ok"
    assert [s.name for s in await store.step_list("fin-again")] == ["a"]


async def test_a_position_holding_another_operation_is_a_conflict_and_no_outcome(store: Store) -> None:
    await running(store, "fin-conflict")
    assert await store.step_record(step("fin-conflict", 0, "a"), EXECUTOR) == "ok"
    outcome = await store.workflow_finish(
        "fin-conflict", EXECUTOR, "SUCCESS", '"done"', None, steps=[step("fin-conflict", 0, "b")]
    )
    # As a lone checkpoint write would: refused, the run stays unfinished, the step is never overwritten.
    assert outcome == "conflict"
    assert [s.name for s in await store.step_list("fin-conflict")] == ["a"]
    pending = await store.workflow_get("fin-conflict")
    assert pending is not None and pending.status == "PENDING"


@pytest.mark.postgres
async def test_without_notify_the_outcome_checks_its_checkpoints_the_same(pg_url: str) -> None:
    store = create_store(f"{pg_url}{'&' if '?' in pg_url else '?'}notify=off")
    await store.open()
    try:
        assert not store.notifies_other_processes
        await test_the_last_checkpoints_share_the_commit_of_the_outcome(store)
        await test_a_position_holding_another_operation_is_a_conflict_and_no_outcome(store)
    finally:
        await store.close()
