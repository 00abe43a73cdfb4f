"""`Client` without the workflows' code: start by name, send, get_event, read_stream (async and sync)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

import perdure
from perdure import Client, ConfigurationError, Perdure, WorkflowConflictError, WorkflowStatus, workflow


@workflow(name="client.echo")
async def echo(text: str, times: int = 1, *, suffix: str = "") -> str:
    await perdure.set_event("seen", text)
    for i in range(times):
        await perdure.write_stream("echo", f"{text}{i}")
    await perdure.close_stream("echo")
    return text * times + suffix


@workflow(name="client.waiter")
async def waiter() -> Any:
    return await perdure.recv("go", timeout=30)


async def test_start_by_name_runs_in_a_runtime_that_has_the_code(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        h = await client.start("client.echo", "ab", 2, suffix="!", workflow_id="by-name")
        assert await h.result(timeout=10) == "abab!"
        assert await client.get_event("by-name", "seen") == "ab"
        assert [v async for v in client.read_stream("by-name", "echo")] == ["ab0", "ab1"]
        info = await client.get_workflow("by-name")
        assert info.status == WorkflowStatus.SUCCESS
        assert info.name == "client.echo"


async def test_start_by_name_twice_runs_once(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        first = await client.start("client.echo", "x", workflow_id="once")
        second = await client.start("client.echo", "other", workflow_id="once")
        assert await first.result(timeout=10) == await second.result(timeout=10) == "x"
        assert len(await client.list_workflows(name="client.echo")) == 1
        with pytest.raises(WorkflowConflictError, match=r"client\.echo"):
            await client.start("client.waiter", workflow_id="once")


async def test_start_of_an_unknown_name_waits_for_a_runtime_with_its_code(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        h = await client.start("client.not-deployed-yet", 1, workflow_id="later")
        with pytest.raises(TimeoutError):
            await h.result(timeout=0.2)
        assert (await h.status()).status == WorkflowStatus.ENQUEUED
        with pytest.raises(ConfigurationError):
            await client.start("", 1)
        with pytest.raises(perdure.SerializationError):
            await client.start("client.echo", object())


async def test_send_from_a_client_wakes_the_workflow(app: Perdure, db_url: str) -> None:
    h = await app.start(waiter, workflow_id="wait-client")
    async with Client(db_url) as client:
        await client.send("wait-client", {"approved": True}, topic="go", idempotency_key="approval-1")
        await client.send("wait-client", {"approved": True}, topic="go", idempotency_key="approval-1")
        assert await h.result() == {"approved": True}


def test_sync_client(db_url: str) -> None:
    with Perdure(db_url, maintenance_interval=0.05), Client(db_url) as client:
        h = client.start_sync("client.echo", "s", 3, workflow_id="sync-client")
        assert h.result_sync(timeout=10) == "sss"
        assert client.get_event_sync("sync-client", "seen") == "s"
        assert client.get_all_events_sync("sync-client") == {"seen": "s"}
        assert list(client.read_stream_sync("sync-client", "echo", 1)) == ["s1", "s2"]
        w = client.start_sync("client.waiter", workflow_id="sync-wait")
        client.send_sync("sync-wait", "yes", topic="go")
        assert w.result_sync(timeout=10) == "yes"


def test_a_client_in_another_process_starts_and_steers_by_name(db_url: str) -> None:
    program = textwrap.dedent(
        """
        import sys
        from perdure import Client
        with Client(sys.argv[1]) as client:
            h = client.start_sync("client.waiter", workflow_id="remote")
            client.send_sync("remote", "from far away", topic="go")
            print(h.result_sync(timeout=30))
        """
    )
    with Perdure(db_url, maintenance_interval=0.05):
        proc = subprocess.run([sys.executable, "-c", program, db_url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "from far away"


@pytest.mark.postgres
async def test_start_by_name_wakes_an_idle_runtime_at_once_on_postgres(pg_url: str) -> None:
    # The maintenance tick is far away: only the NOTIFY sent with the start can explain a fast pickup.
    async with Perdure(pg_url, maintenance_interval=30.0), Client(pg_url) as client:
        started = time.monotonic()
        h = await client.start("client.echo", "fast", workflow_id="fast")
        assert await h.result(timeout=10) == "fast"
        assert time.monotonic() - started < 5.0


def test_sync_calls_need_a_client_opened_with_with(db_url: str) -> None:
    client = Client(db_url)
    with pytest.raises(ConfigurationError, match="with Client"):
        client.send_sync("x", 1)


async def test_arguments_that_do_not_fit_fail_the_run_clearly(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        h = await client.start("client.echo", workflow_id="no-args")
        with pytest.raises(perdure.SerializationError, match="do not fit"):
            await h.result(timeout=10)
        assert (await h.status()).status == WorkflowStatus.ERROR
