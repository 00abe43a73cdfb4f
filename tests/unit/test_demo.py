"""`perdure demo` end to end: the geography agent's child process is SIGKILLed after the tool step, a second
process recovers the run, and the first model turn and the tool call are not repeated."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner, Result

from perdure import Client
from perdure.cli import main
from perdure.demo import EFFECTS_FILE, MODEL_ENV, MODEL_STEP, TOOL_STEP, read_effects

ANSWER = "Mexico City (Ciudad de México, CDMX)"


def perdure_command() -> list[str]:
    script = Path(sys.executable).parent / "perdure"
    return [str(script)] if script.exists() else [sys.executable, "-m", "perdure.cli"]


def run_demo_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    env = dict(os.environ)
    env.pop("PERDURE_DATABASE_URL", None)
    env.pop(MODEL_ENV, None)
    began = time.monotonic()
    done = subprocess.run(
        [*perdure_command(), "demo", "--keep", *args], capture_output=True, text=True, env=env, timeout=120
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"kept the demo folder \(database, side-effect log\): (\S+)", done.stdout)
    assert match, done.stdout
    return done, Path(match.group(1)), elapsed


def child_pids(out: str) -> tuple[int, int]:
    pids = [int(p) for p in re.findall(r"child process (\d+)", out)]
    assert len(pids) == 2, out
    return pids[0], pids[1]


def test_demo_crashes_after_the_tool_and_never_repeats_the_model_turn_or_the_tool() -> None:
    done, folder, elapsed = run_demo_cli()
    out = done.stdout
    try:
        first, second = child_pids(out)
        # The crash is shown, with what the database held at that point.
        assert f"process {first} crashed: killed by SIGKILL" in out
        assert f"run is PENDING, 2 step(s) checkpointed: {MODEL_STEP}, {TOOL_STEP}" in out
        # The timeline names the steps, and what was replayed versus executed.
        assert out.count(MODEL_STEP) >= 3 and TOOL_STEP in out
        assert "replayed" in out and "killed at start" in out
        assert "model request or tool call): model turn 1 x1, get_capital x1, model turn 2 x1" in out
        assert "nothing ran twice" in out

        # From the kept side-effect log: model turn 1 and the tool ran once, in the first process only; the
        # second process made only the second model request.
        effects = read_effects(folder)
        assert (folder / EFFECTS_FILE).exists()
        assert [(e.pid, e.step) for e in effects] == [
            (first, "model turn 1"),
            (first, "get_capital"),
            (second, "model turn 2"),
        ]
        assert effects[0].detail == "calls get_capital(country='Mexico')"
        assert effects[1].detail == "get_capital('Mexico') -> Mexico City"
        assert effects[2].detail == f"answers {ANSWER!r}"

        # The final answer, as printed and as stored.
        assert f"What is the capital of Mexico?\n{ANSWER}\n" in out
        with Client(f"sqlite:///{folder / 'demo.sqlite'}") as client:
            (info,) = client.list_workflows_sync()
            steps = client.list_steps_sync(info.workflow_id)
        assert info.name == "geography.run" and info.status == "SUCCESS"
        assert info.recovery_attempts == 1
        assert [s.name for s in steps] == [MODEL_STEP, TOOL_STEP, MODEL_STEP]
        stored = json.loads(info.output or "null")
        assert stored["output"] == ANSWER
        assert stored["usage"]["requests"] == 2 and stored["usage"]["tool_calls"] == 1  # not double counted
        assert elapsed < 20, f"the demo took {elapsed:.1f} s"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_with_a_model_string_runs_that_model_in_the_children() -> None:
    # `test` is pydantic-ai's TestModel by its model string: offline, and it calls every tool once. It reaches
    # the children through the environment and is wrapped like any real model, crash point included.
    done, folder, _ = run_demo_cli("--model", "test")
    out = done.stdout
    try:
        first, second = child_pids(out)
        assert "model     test" in out
        assert f"process {first} crashed: killed by SIGKILL" in out
        effects = read_effects(folder)
        assert [(e.pid, e.step) for e in effects] == [
            (first, "model turn 1"),
            (first, "get_capital"),
            (second, "model turn 2"),
        ]
        with Client(f"sqlite:///{folder / 'demo.sqlite'}") as client:
            (info,) = client.list_workflows_sync()
        assert info.status == "SUCCESS"
        assert "get_capital" in json.loads(info.output or "null")["output"]  # TestModel echoes the tool results
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_on_a_given_database_url(db_url: str) -> None:
    url = db_url
    result = CliRunner().invoke(main, ["demo", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "killed by SIGKILL" in result.stdout
    assert ANSWER in result.stdout
    assert "kept the demo folder" not in result.stdout
    with Client(url) as client:
        (info,) = client.list_workflows_sync()
    assert info.status == "SUCCESS" and info.name == "geography.run"


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "perdure demo" not in result.stdout  # failed before any child started


def test_demo_bad_url_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--database-url", f"sqlite:///{tmp_path}/missing/dir/x.sqlite"])
    assert_one_line_error(result, "does not exist")


def test_demo_unknown_model_is_one_line() -> None:
    result = CliRunner().invoke(main, ["demo", "--model", "nosuch:model"])
    assert_one_line_error(result, "cannot use model 'nosuch:model'", "Unknown model", "openai:gpt-5")


def test_demo_model_without_its_package_or_key_is_one_line() -> None:
    # No network here: openai:gpt-5 fails at once, for want of the `openai` package or of OPENAI_API_KEY.
    env = {"OPENAI_API_KEY": None}
    result = CliRunner().invoke(main, ["demo", "--model", "openai:gpt-5"], env=env)
    assert_one_line_error(result, "cannot use model 'openai:gpt-5'")
    assert "openai" in result.stderr.lower() and ("install" in result.stderr or "OPENAI_API_KEY" in result.stderr)
