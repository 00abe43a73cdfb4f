"""Steps: checkpoints, replay without running, retries with backoff, retry filters, timeouts, misuse."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from perdure import (
    ConfigurationError,
    Perdure,
    StepTimeout,
    WorkflowStatus,
    step,
    workflow,
)
from perdure.workflows import StepOptions

RUNS: Counter[str] = Counter()
FAIL: dict[str, bool] = {}
TIMES: dict[str, list[float]] = {}
INTERRUPTED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    FAIL.clear()
    TIMES.clear()
    INTERRUPTED.clear()


# -- checkpoints and replay -----------------------------------------------------------------------------


@step
async def step_a(x: int) -> int:
    RUNS["a"] += 1
    return x + 1


@step
async def step_b(x: int) -> int:
    RUNS["b"] += 1
    if FAIL.get("b"):
        raise RuntimeError("b failed")
    return x * 10


@workflow
async def a_then_b(x: int) -> int:
    return await step_b(await step_a(x))


async def test_steps_are_checkpointed_in_order(app: Perdure) -> None:
    h = await app.start(a_then_b, 1, workflow_id="ab")
    assert await h.result() == 20
    steps = await app.list_steps("ab")
    assert [(s.step_id, s.name, s.status, s.output, s.error) for s in steps] == [
        (0, "step_a", "SUCCESS", "2", None),
        (1, "step_b", "SUCCESS", "20", None),
    ]


async def test_resume_of_error_replays_completed_steps_and_reruns_the_failing_one(app: Perdure) -> None:
    FAIL["b"] = True
    h = await app.start(a_then_b, 1, workflow_id="ab-err")
    with pytest.raises(RuntimeError, match="b failed"):
        await h.result()
    info = await app.get_workflow("ab-err")
    assert info.status == WorkflowStatus.ERROR
    assert info.error == "RuntimeError: b failed"
    steps = await app.list_steps("ab-err")
    assert [(s.name, s.status) for s in steps] == [("step_a", "SUCCESS"), ("step_b", "ERROR")]
    assert steps[1].error == "RuntimeError: b failed"
    assert steps[1].output is None

    FAIL["b"] = False
    resumed = await app.resume("ab-err")
    assert resumed.workflow_id == "ab-err"
    assert await resumed.result() == 20
    assert RUNS["a"] == 1  # replayed from its checkpoint, not run
    assert RUNS["b"] == 2  # the failing step ran again
    assert (await app.get_workflow("ab-err")).status == WorkflowStatus.SUCCESS
    assert [(s.name, s.status) for s in await app.list_steps("ab-err")] == [
        ("step_a", "SUCCESS"),
        ("step_b", "SUCCESS"),
    ]


@step
async def always_fails(tag: str) -> None:
    RUNS["always_fails"] += 1
    raise KeyError(tag)


@workflow
async def catches_step_error() -> str:
    try:
        await always_fails("k")
    except KeyError as exc:
        caught = f"caught {exc.args[0]}"
    else:
        caught = "nothing"
    return caught + f" then {await step_a(1)}"


async def test_recorded_step_error_is_replayed_without_running(app: Perdure) -> None:
    h = await app.start(catches_step_error, workflow_id="ce")
    assert await h.result() == "caught k then 2"
    fork = await app.fork("ce", from_step=2)
    assert await fork.result() == "caught k then 2"
    assert RUNS["always_fails"] == 1
    assert RUNS["a"] == 1
    # Replay from position 1 keeps the recorded error but runs step_a again.
    fork1 = await app.fork("ce", from_step=1)
    assert await fork1.result() == "caught k then 2"
    assert RUNS["always_fails"] == 1
    assert RUNS["a"] == 2


# -- retries --------------------------------------------------------------------------------------------


@step(max_attempts=4, retry_interval=0.02, backoff=2.0)
async def flaky(tag: str) -> str:
    TIMES.setdefault(tag, []).append(time.monotonic())
    RUNS[tag] += 1
    if RUNS[tag] < 3:
        raise ConnectionError(f"try {RUNS[tag]}")
    return f"ok after {RUNS[tag]}"


@workflow
async def uses_flaky(tag: str) -> str:
    return await flaky(tag)


async def test_retries_with_backoff_until_success_and_records_attempts(app: Perdure) -> None:
    h = await app.start(uses_flaky, "f", workflow_id="flaky")
    assert await h.result() == "ok after 3"
    assert RUNS["f"] == 3
    t = TIMES["f"]
    # Waits of retry_interval * backoff**n, with at most 10% jitter below.
    assert t[1] - t[0] >= 0.02 * 0.9
    assert t[2] - t[1] >= 0.04 * 0.9
    [s] = await app.list_steps("flaky")
    assert s.status == "SUCCESS"
    assert s.output == '"ok after 3"'
    assert s.attempts == 3


@step(max_attempts=3, retry_interval=0.001)
async def never_works() -> None:
    RUNS["never_works"] += 1
    raise ConnectionError(f"attempt {RUNS['never_works']}")


@workflow
async def uses_never_works() -> None:
    await never_works()


async def test_retries_exhausted_raise_the_last_error_and_record_attempts(app: Perdure) -> None:
    h = await app.start(uses_never_works, workflow_id="nw")
    with pytest.raises(ConnectionError, match="attempt 3"):
        await h.result()
    assert RUNS["never_works"] == 3
    [s] = await app.list_steps("nw")
    assert s.status == "ERROR"
    assert s.attempts == 3
    assert s.error == "ConnectionError: attempt 3"
    assert s.started_at is not None and s.completed_at is not None
    assert s.started_at <= s.completed_at


@step(max_attempts=5, retry_interval=0.001, non_retryable=ValueError)
async def refuses(kind: str) -> None:
    RUNS[kind] += 1
    raise ValueError(kind) if kind == "value" else OSError(kind)


@workflow
async def uses_refuses(kind: str) -> None:
    await refuses(kind)


async def test_non_retryable_exceptions_are_not_retried(app: Perdure) -> None:
    h = await app.start(uses_refuses, "value", workflow_id="nr")
    with pytest.raises(ValueError, match="value"):
        await h.result()
    assert RUNS["value"] == 1
    assert (await app.list_steps("nr"))[0].attempts == 1

    h2 = await app.start(uses_refuses, "os", workflow_id="nr2")
    with pytest.raises(OSError, match="os"):
        await h2.result()
    assert RUNS["os"] == 5


@step(max_attempts=3, retry_interval=0.001, retry_on=(KeyError,))
async def picky(kind: str) -> None:
    RUNS[kind] += 1
    raise KeyError(kind) if kind == "key" else ValueError(kind)


@workflow
async def uses_picky(kind: str) -> None:
    await picky(kind)


async def test_retry_on_limits_which_exceptions_are_retried(app: Perdure) -> None:
    with pytest.raises(KeyError):
        await (await app.start(uses_picky, "key")).result()
    assert RUNS["key"] == 3
    with pytest.raises(ValueError):
        await (await app.start(uses_picky, "value")).result()
    assert RUNS["value"] == 1


def test_backoff_delay_grows_and_is_capped() -> None:
    opts = StepOptions(max_attempts=10, retry_interval=1.0, backoff=3.0, max_interval=5.0)
    assert 0.9 <= opts.delay(1) <= 1.1
    assert 2.7 <= opts.delay(2) <= 3.3
    assert 4.5 <= opts.delay(3) <= 5.5  # 9 s capped at max_interval
    assert 4.5 <= opts.delay(8) <= 5.5


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"retry_interval": -1.0}, {"backoff": 0.5}, {"timeout": 0}, {"max_interval": -1.0}],
)
def test_invalid_step_options_are_refused_at_decoration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        step(**kwargs)  # type: ignore[arg-type]


def test_timeout_on_a_sync_step_is_refused_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match="async"):

        @step(timeout=1.0)
        def blocking() -> None:
            return None


# -- timeouts -------------------------------------------------------------------------------------------


@step(timeout=0.05, max_attempts=2, retry_interval=0.001)
async def hangs(tag: str) -> None:
    RUNS[tag] += 1
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        INTERRUPTED.append(tag)
        raise


@workflow
async def uses_hangs(tag: str) -> None:
    await hangs(tag)


async def test_async_step_timeout_raises_step_timeout_and_stops_the_attempt(app: Perdure) -> None:
    h = await app.start(uses_hangs, "h", workflow_id="to")
    with pytest.raises(StepTimeout, match=r"0\.05"):
        await asyncio.wait_for(h.result(), 5)
    assert RUNS["h"] == 2  # a timeout is retried like any failure
    assert INTERRUPTED == ["h", "h"]
    [s] = await app.list_steps("to")
    assert s.status == "ERROR"
    assert s.attempts == 2
    assert s.error is not None and s.error.startswith("StepTimeout:")
    # Read back from the database, the stored error is rebuilt as StepTimeout too.
    assert (await app.get_workflow("to")).status == WorkflowStatus.ERROR
    with pytest.raises(StepTimeout):
        await (await app.retrieve("to")).result()


# -- outside a workflow, and misuse ---------------------------------------------------------------------


@step(max_attempts=2, retry_interval=0.001)
def sync_flaky(x: int) -> int:
    RUNS["sync_flaky"] += 1
    if RUNS["sync_flaky"] == 1:
        raise ConnectionError("first")
    return x + 1


async def test_steps_outside_a_workflow_just_run(app: Perdure) -> None:
    assert await step_a(1) == 2
    assert await step_a(1) == 2
    assert RUNS["a"] == 2
    assert sync_flaky(1) == 2  # retries apply outside a workflow too
    assert RUNS["sync_flaky"] == 2
    with pytest.raises(StepTimeout):
        await hangs("outside")
    assert await app.list_workflows() == []


async def test_steps_run_without_any_runtime() -> None:
    assert await step_a(41) == 42
    assert RUNS["a"] == 1


@step
def sync_step(x: int) -> int:
    RUNS["sync_step"] += 1
    return x


@workflow
async def async_calls_sync_step() -> int:
    return sync_step(1)


async def test_sync_step_from_async_workflow_is_a_configuration_error(app: Perdure) -> None:
    h = await app.start(async_calls_sync_step, workflow_id="mix")
    with pytest.raises(ConfigurationError, match="async def"):
        await h.result()
    assert RUNS["sync_step"] == 0
    assert await app.list_steps("mix") == []
    assert (await app.get_workflow("mix")).status == WorkflowStatus.ERROR


@step(max_attempts=3, retry_interval=0.001)
def sync_retrying(tag: str) -> str:
    RUNS[tag] += 1
    if RUNS[tag] < 2:
        raise ConnectionError("again")
    return tag


@workflow
def sync_workflow_with_retries(tag: str) -> str:
    return sync_retrying(tag) + sync_retrying(tag + "!")


async def test_sync_steps_in_sync_workflow_retry_and_record_attempts(app: Perdure) -> None:
    h = await app.start(sync_workflow_with_retries, "s", workflow_id="sw")
    assert await h.result() == "ss!"
    steps = await app.list_steps("sw")
    assert [(s.name, s.attempts) for s in steps] == [("sync_retrying", 2), ("sync_retrying", 2)]


@step
async def square(x: int) -> int:
    RUNS[f"square:{x}"] += 1
    await asyncio.sleep(0.001 * (5 - x))  # finish out of order
    return x * x


@workflow
async def gathered(n: int) -> list[int]:
    return list(await asyncio.gather(*(square(i) for i in range(n))))


async def test_concurrent_steps_in_one_workflow_get_stable_positions(app: Perdure) -> None:
    h = await app.start(gathered, 5, workflow_id="g")
    assert await h.result() == [0, 1, 4, 9, 16]
    steps = await app.list_steps("g")
    assert [(s.step_id, s.output) for s in steps] == [(0, "0"), (1, "1"), (2, "4"), (3, "9"), (4, "16")]
    fork = await app.fork("g", from_step=5)
    assert await fork.result() == [0, 1, 4, 9, 16]
    assert all(RUNS[f"square:{i}"] == 1 for i in range(5))
