"""Several executors on one database: idempotent starts, takeover of a dead or frozen executor's work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from perdure import Client, WorkflowNotFound

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("takeover_worker.py")
LEASE = "1.5"


def spawn(db_url: str, workdir: Path, name: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PERDURE_HOST_ID=f"host-{name}")  # each worker plays a separate host
    return subprocess.Popen(
        [sys.executable, str(WORKER), db_url, str(workdir), name, LEASE, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def effects(workdir: Path) -> Counter[str]:
    path = workdir / "effects.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_three_workers_same_ids_then_one_killed(db_url: str, tmp_path: Path) -> None:
    workers = {name: spawn(db_url, tmp_path, name, "many") for name in ("w1", "w2", "w3")}
    wait_until("every worker started its 100 ids", lambda: all((tmp_path / f"started-{n}").exists() for n in workers))
    wait_until("every job ran step a", lambda: sum(1 for k in effects(tmp_path) if k.startswith("a-")) == 100)
    with Client(db_url) as client:
        # The 300 starts made 100 workflows; step a's checkpoints are written just after its effect.
        wait_until(
            "every step a is checkpointed",
            lambda: all(len(client.list_steps_sync(f"job-{i}")) == 1 for i in range(100)),
        )
        rows = client.list_workflows_sync(limit=None)
        assert len(rows) == 100
    # Which worker won each id's start is a race; kill the one that holds the most (it holds some).
    owners = Counter(w.executor_id for w in rows)
    victim, held = owners.most_common(1)[0]
    owned_by_victim = {w.workflow_id for w in rows if w.executor_id == victim}
    assert held == len(owned_by_victim) > 0
    workers[victim].send_signal(signal.SIGKILL)
    workers[victim].wait()
    (tmp_path / "gate").touch()
    survivors = [name for name in workers if name != victim]
    for name in survivors:
        out, err = workers[name].communicate(timeout=120)
        assert workers[name].returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"done": 100}
    counts = effects(tmp_path)
    for i in range(100):
        # Completed steps ran exactly once; the victim died inside step b, which then ran once elsewhere.
        assert counts[f"a-{i}"] == 1
        assert counts[f"c-{i}"] == 1
        assert sum(v for k, v in counts.items() if k.startswith(f"b-{i}-")) == 1
    assert not any(k.endswith(f"-{victim}") and k.startswith("b-") for k in counts)
    with Client(db_url) as client:
        rows = client.list_workflows_sync(limit=None)
        assert {w.status.value for w in rows} == {"SUCCESS"}
        taken = [w for w in rows if w.workflow_id in owned_by_victim]
        assert all(w.executor_id in survivors and w.recovery_attempts == 1 for w in taken)


def test_frozen_owner_cannot_write_after_takeover(db_url: str, tmp_path: Path) -> None:
    owner = spawn(db_url, tmp_path, "A", "stale")
    taker = spawn(db_url, tmp_path, "B", "idle")
    try:
        with Client(db_url) as client:

            def step_a_done() -> bool:
                try:
                    return len(client.list_steps_sync("stale-1")) == 1
                except WorkflowNotFound:
                    return False

            wait_until("A checkpointed step a", step_a_done)
            owner.send_signal(signal.SIGSTOP)
            # A stops heart-beating; after the lease B claims the workflow.
            wait_until("B took the workflow over", lambda: client.get_workflow_sync("stale-1").executor_id == "B")
            (tmp_path / "gate").touch()
            wait_until("B finished it", lambda: client.get_workflow_sync("stale-1").status.value == "SUCCESS")
            steps_before = [(s.step_id, s.name, s.output) for s in client.list_steps_sync("stale-1")]
            owner.send_signal(signal.SIGCONT)
            out, err = owner.communicate(timeout=60)
            assert owner.returncode == 0, err
            # A's step b did run again when it woke (at-least-once), but its checkpoint was refused.
            assert "b-1-A" in effects(tmp_path)
            assert "refused" in err
            assert json.loads(out.strip().splitlines()[-1]) == {"result": "b-by-B"}
            assert [(s.step_id, s.name, s.output) for s in client.list_steps_sync("stale-1")] == steps_before
            assert steps_before[1] == (1, "b", '"b-by-B"')
    finally:
        (tmp_path / "stop").touch()
        for proc in (owner, taker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()  # never leave a worker behind, even when the test failed
                    proc.wait()
