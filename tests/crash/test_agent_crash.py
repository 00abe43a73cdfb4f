"""A durable agent's process is SIGKILLed mid-run and restarted: recorded turns and tools never repeat."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from perdure import Client

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("agent_worker.py")


def run(db_url: str, workdir: Path, scenario: str, mode: str) -> tuple[int, dict | None]:
    proc = subprocess.run(
        [sys.executable, str(WORKER), db_url, scenario, "agent-1", str(workdir), mode],
        capture_output=True,
        text=True,
        timeout=90,
    )
    if proc.returncode == 0:
        return 0, json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.returncode, None


def effects(workdir: Path) -> Counter[str]:
    return Counter((workdir / "effects.log").read_text().split())


def step_names(db_url: str) -> list[str]:
    with Client(db_url) as client:
        return [s.name for s in client.list_steps_sync("agent-1")]


def test_killed_after_the_tool_resumes_without_repeating_model_or_tool(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "crash-model-2").touch()
    assert run(db_url, tmp_path, "single", "start")[0] == -signal.SIGKILL
    assert step_names(db_url) == ["crashy__model.request", "crashy__function_toolset__<agent>.call_tool:tool_a"]
    _, out = run(db_url, tmp_path, "single", "recover")
    assert out == {"output": "answer: 10", "requests": 2}
    # Turn 1 and the tool were replayed from checkpoints; turn 2 was interrupted and ran again.
    assert effects(tmp_path) == Counter({"model-1": 1, "tool_a": 1, "model-2": 2})


def test_killed_inside_the_tool_runs_the_tool_again(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "crash-tool-a").touch()
    assert run(db_url, tmp_path, "single", "start")[0] == -signal.SIGKILL
    _, out = run(db_url, tmp_path, "single", "recover")
    assert out == {"output": "answer: 10", "requests": 2}
    assert effects(tmp_path) == Counter({"model-1": 1, "tool_a": 2, "model-2": 1})


def test_parallel_tool_calls_replay_deterministically_after_a_crash_mid_batch(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "crash-tool-b").touch()
    assert run(db_url, tmp_path, "parallel", "start")[0] == -signal.SIGKILL
    _, out = run(db_url, tmp_path, "parallel", "recover")
    assert out == {"output": "answer: 10,20", "requests": 2}
    # tool_a finished before the crash and was replayed; tool_b was interrupted and ran again.
    assert effects(tmp_path) == Counter({"model-1": 1, "tool_a": 1, "tool_b": 2, "model-2": 1})
    assert step_names(db_url) == [
        "crashy__model.request",
        "crashy__function_toolset__<agent>.call_tool:tool_a",
        "crashy__function_toolset__<agent>.call_tool:tool_b",
        "crashy__model.request",
    ]
