"""Real processes killed with SIGKILL at chosen points, then restarted: completed steps never re-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perdure import Client, WorkflowNotFound

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("crash_worker.py")


class Crashlab:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.dir = tmp_path
        self.db_url = db_url

    def arm(self, point: str) -> None:
        (self.dir / f"crash-{point}").touch()

    def spawn(self, scenario: str, wid: str, mode: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        import os

        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.Popen(
            [sys.executable, str(WORKER), self.db_url, scenario, wid, str(self.dir), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )

    def run(self, scenario: str, wid: str, mode: str, env: dict[str, str] | None = None) -> tuple[int, dict | None]:
        proc = self.spawn(scenario, wid, mode, env)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            return 0, json.loads(out.strip().splitlines()[-1])
        assert proc.returncode == -signal.SIGKILL, f"worker failed ({proc.returncode}):\n{err}"
        return proc.returncode, None

    def effects(self) -> list[str]:
        path = self.dir / "effects.log"
        return path.read_text().split() if path.exists() else []

    def steps(self, wid: str) -> list[tuple[int, str, str | None]]:
        with Client(self.db_url) as client:
            try:
                return [(s.step_id, s.name, s.output) for s in client.list_steps_sync(wid)]
            except WorkflowNotFound:
                return []

    def status(self, wid: str) -> str:
        with Client(self.db_url) as client:
            return client.get_workflow_sync(wid).status.value


@pytest.fixture
def lab(tmp_path: Path, db_url: str) -> Crashlab:
    return Crashlab(tmp_path, db_url)


def test_kill_inside_a_step(lab: Crashlab) -> None:
    lab.arm("in-step")
    code, _ = lab.run("in_step", "w-in-step", "start")
    assert code == -signal.SIGKILL
    assert lab.effects() == ["one", "two"]
    assert lab.status("w-in-step") == "PENDING"
    code, out = lab.run("in_step", "w-in-step", "recover")
    assert out == {"status": "SUCCESS", "result": ["ONE", "TWO", "THREE"]}
    # "one" completed before the crash and never ran again; "two" was interrupted and ran again.
    assert lab.effects() == ["one", "two", "two", "three"]


def test_kill_between_steps(lab: Crashlab) -> None:
    lab.arm("between")
    code, _ = lab.run("between_steps", "w-between", "start")
    assert code == -signal.SIGKILL
    assert lab.effects() == ["one", "two"]
    _, out = lab.run("between_steps", "w-between", "recover")
    assert out == {"status": "SUCCESS", "result": ["ONE", "TWO", "THREE"]}
    assert lab.effects() == ["one", "two", "three"]


def test_kill_during_durable_sleep_sleeps_only_the_rest(lab: Crashlab) -> None:
    proc = lab.spawn("sleep", "w-sleep", "start")
    deadline = time.monotonic() + 30
    # Wait for the event "the wake-up time is checkpointed", read from the database itself.
    while not any(
        name == "perdure.sleep" for _, name, _ in (lab.steps("w-sleep") if (lab.dir / "sleeping").exists() else [])
    ):
        assert time.monotonic() < deadline, "the workflow never reached its sleep"
        assert proc.poll() is None
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    wake_at = int(next(out for _, name, out in lab.steps("w-sleep") if name == "perdure.sleep"))
    _, out = lab.run("sleep", "w-sleep", "recover")
    finished = time.time() * 1000
    assert out == {"status": "SUCCESS", "result": "woke"}
    assert lab.effects() == ["before", "after"]
    # The recorded wake-up time was kept (not re-recorded from the restart), and it was honoured.
    assert int(next(out for _, name, out in lab.steps("w-sleep") if name == "perdure.sleep")) == wake_at
    assert finished >= wake_at


def test_kill_inside_a_child_workflow(lab: Crashlab) -> None:
    lab.arm("in-step")
    code, _ = lab.run("parent", "w-parent", "start")
    assert code == -signal.SIGKILL
    assert lab.effects() == ["parent-a", "child-4-a", "child-4-b"]
    _, out = lab.run("parent", "w-parent", "recover")
    assert out == {"status": "SUCCESS", "result": 41}
    assert lab.effects() == ["parent-a", "child-4-a", "child-4-b", "child-4-b", "parent-b"]
    assert [name for _, name, _ in lab.steps("w-parent")] == ["record", "crash.child", "record"]
    assert lab.status("w-parent-1") == "SUCCESS"


def test_poison_workflow_ends_retries_exceeded(lab: Crashlab) -> None:
    code, _ = lab.run("poison", "w-poison", "start")
    assert code == -signal.SIGKILL
    runs = 1
    while True:
        code, out = lab.run("poison", "w-poison", "recover")
        if code == 0:
            break
        runs += 1
        assert runs < 10, "the poison workflow was never stopped"
    assert out is not None and out["error"] == "MaxRecoveryAttemptsExceeded"
    assert lab.status("w-poison") == "RETRIES_EXCEEDED"
    # First run plus max_recovery_attempts=2 recoveries ran the body; the next recovery parked it.
    assert lab.effects() == ["poison"] * 3


def test_changed_code_is_detected_on_replay(lab: Crashlab) -> None:
    lab.arm("changed")
    code, _ = lab.run("changed", "w-changed", "start", env={"CRASH_CODE_VERSION": "A"})
    assert code == -signal.SIGKILL
    before = lab.steps("w-changed")
    _, out = lab.run("changed", "w-changed", "recover", env={"CRASH_CODE_VERSION": "B"})
    assert out is not None and out["error"] == "NonDeterminismError"
    assert "step 1" in out["message"]
    assert lab.status("w-changed") == "ERROR"
    assert lab.steps("w-changed") == before  # nothing recorded was overwritten
    assert lab.effects() == ["first", "old-path"]


def test_two_processes_start_the_same_id_once(lab: Crashlab) -> None:
    procs = [lab.spawn("once", "w-once", "start") for _ in range(2)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs == [{"status": "SUCCESS", "result": "ran"}] * 2
    assert lab.effects() == ["once-body", "once-step"]


def test_recovery_only_hands_work_to_the_same_app_version(lab: Crashlab) -> None:
    lab.arm("in-step")
    code, _ = lab.run("in_step", "w-version", "start", env={"CRASH_APP_VERSION": "1"})
    assert code == -signal.SIGKILL
    # A process of another version launches: it must leave the workflow alone.
    _, out = lab.run("in_step", "w-version", "launch-only", env={"CRASH_APP_VERSION": "2"})
    assert out == {"status": "LAUNCHED"}
    with Client(lab.db_url) as client:
        info = client.get_workflow_sync("w-version")
        assert (info.status.value, info.recovery_attempts, info.app_version) == ("PENDING", 0, "1")
        assert client.list_workflows_sync(app_version="1")[0].workflow_id == "w-version"
    # A process of the same version recovers it.
    _, out = lab.run("in_step", "w-version", "recover", env={"CRASH_APP_VERSION": "1"})
    assert out == {"status": "SUCCESS", "result": ["ONE", "TWO", "THREE"]}
