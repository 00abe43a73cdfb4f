"""An approval wait survives a SIGKILL and is answered from another process while the worker is down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perdure import Client
from perdure.pydantic_ai import resolve

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("approval_worker.py")


async def test_approval_wait_survives_a_restart_and_is_answered_from_elsewhere(db_url: str, tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, str(WORKER), db_url, str(tmp_path), "start"], text=True)
    asked = tmp_path / "asked.log"
    deadline = time.monotonic() + 60
    while not asked.exists():  # the run reached the approval and handed its token out
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.01)
    token = asked.read_text().split()[0]
    async with Client(db_url) as client:
        # The token's `ask` step is checkpointed right after `ask` returns: wait for it, then kill.
        while not any(s.name.endswith(".ask") for s in await client.list_steps("approval-1")):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.kill()
        worker.wait()
        await resolve(token, {"approvals": {"r1": True}}, client=client)  # while nobody runs the agent
    proc = subprocess.run(
        [sys.executable, str(WORKER), db_url, str(tmp_path), "recover"], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"output": "refunded 30"}
    assert asked.read_text().split() == [token]  # not asked again after the restart
    assert (tmp_path / "refunds.log").read_text().split() == ["30"]  # approved once, refunded once
