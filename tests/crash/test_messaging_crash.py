"""Messages and streams across SIGKILLed processes: nothing received twice, nothing lost, no duplicates."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from perdure import Client, WorkflowNotFound
from perdure.messaging import RECV_STEP

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("messaging_worker.py")


def spawn(db_url: str, workdir: Path, scenario: str, wid: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), db_url, scenario, wid, str(workdir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err}"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def wait_until(what: str, check: Callable[[], bool], proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert proc is None or proc.poll() is None, f"the worker exited early:\n{proc.communicate()[1]}"
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def effects(workdir: Path) -> list[str]:
    path = workdir / "effects.log"
    return path.read_text().split() if path.exists() else []


def steps(client: Client, wid: str) -> list[tuple[int, str, str | None]]:
    try:
        return [(s.step_id, s.name, s.output) for s in client.list_steps_sync(wid)]
    except WorkflowNotFound:
        return []


def test_kill_while_waiting_in_recv_then_receive_a_message_sent_while_down(db_url: str, tmp_path: Path) -> None:
    proc = spawn(db_url, tmp_path, "inbox", "mail", "start")
    with Client(db_url) as client:
        wait_until("the workflow waits in recv", lambda: (0, RECV_STEP) in {s[:2] for s in steps(client, "mail")}, proc)
        client.send_sync("mail", "first", topic="mail")
        # It received the first message and waits for the second (120 s timeout).
        wait_until("it waits again", lambda: (2, RECV_STEP) in {s[:2] for s in steps(client, "mail")}, proc)
        assert effects(tmp_path) == ["got:first"]
        proc.kill()
        proc.wait()
        before = client.list_steps_sync("mail")
        assert [(s.step_id, s.status) for s in before] == [(0, "SUCCESS"), (1, "SUCCESS"), (2, "WAITING")]
        client.send_sync("mail", "second", topic="mail")  # from another process, while the worker is down
        assert client.get_workflow_sync("mail").status.value == "PENDING"

    out = finish(spawn(db_url, tmp_path, "inbox", "mail", "recover"))
    assert out == {"status": "SUCCESS", "result": ["first", "second"]}
    assert effects(tmp_path) == ["got:first", "got:second"]  # nothing received twice
    with Client(db_url) as client:
        after = client.list_steps_sync("mail")
    assert after[:2] == before[:2]  # the first message's checkpoint is kept
    # The wait under way at the kill was resumed (same start), not begun again, and completed.
    assert (after[2].status, after[2].output, after[2].started_at) == ("SUCCESS", '"second"', before[2].started_at)
    assert [s.output for s in after if s.name == RECV_STEP] == ['"first"', '"second"']


def test_a_restarted_wait_lasts_only_the_rest_of_its_timeout(db_url: str, tmp_path: Path) -> None:
    proc = spawn(db_url, tmp_path, "short_wait", "short", "start")
    with Client(db_url) as client:
        wait_until("the workflow waits", lambda: any(name == RECV_STEP for _, name, _ in steps(client, "short")), proc)
        proc.kill()
        proc.wait()
        deadline = int(next(out for _, name, out in steps(client, "short") if name == RECV_STEP) or 0)
    # The process stays down for most of the 3 s timeout; time passing is the point here.
    time.sleep(max(0.0, (deadline - 1000) / 1000 - time.time()))
    restarted = time.time() * 1000
    out = finish(spawn(db_url, tmp_path, "short_wait", "short", "recover"))
    assert out == {"status": "SUCCESS", "result": None}
    (woke,) = effects(tmp_path)
    woke_at = int(woke.split(":")[1])
    assert woke_at >= deadline
    assert woke_at < restarted + 3000, "the recovered wait started its full timeout again"


async def test_a_stream_of_1000_values_survives_a_kill_halfway(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "crash-stream-half").touch()
    proc = spawn(db_url, tmp_path, "stream", "stream", "start")
    async with Client(db_url) as client:
        while not await client.list_workflows(workflow_ids=["stream"]):
            assert proc.poll() is None, proc.communicate()[1]
            await asyncio.sleep(0.01)
        # Readers follow the stream live, across the kill and the recovery.
        whole = asyncio.create_task(_read(client, 0, None))
        first_300 = asyncio.create_task(_read(client, 0, 300))
        assert await asyncio.to_thread(proc.wait) == -signal.SIGKILL
        stored = [v async for v in _stored(client)]
        # Killed inside the step writing 500..509, after 505: the stream holds 0..505, nothing more.
        assert stored == list(range(506))
        assert not whole.done()
        recovered = spawn(db_url, tmp_path, "stream", "stream", "recover")
        assert await asyncio.to_thread(finish, recovered) == {"status": "SUCCESS", "result": 1000}
        assert await asyncio.wait_for(whole, 30) == list(range(1000))
        # A reader that disconnected after 300 values resumes at its offset and sees 300..999 once.
        head = await asyncio.wait_for(first_300, 30)
        assert head == list(range(300))
        assert await asyncio.wait_for(_read(client, len(head), None), 30) == list(range(300, 1000))


async def _read(client: Client, offset: int, limit: int | None) -> list[Any]:
    got: list[Any] = []
    async for value in client.read_stream("stream", "numbers", offset):
        got.append(value)
        if limit is not None and len(got) == limit:
            break
    return got


async def _stored(client: Client) -> Any:
    """The values stored so far (the workflow is PENDING, so a reader would wait for more)."""
    offset = 0
    while True:
        rows = await client.store.stream_read("stream", "numbers", offset, 500)
        if not rows:
            return
        for at, text in rows:
            offset = at + 1
            yield json.loads(text or "null")
