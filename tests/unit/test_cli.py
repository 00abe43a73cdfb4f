"""The `perdure` command against a real database, with workflows run by a real runtime in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import perdure
from perdure import Perdure, WorkflowCancelled, step, workflow
from perdure.cli import main
from perdure.store.sqlite import LATEST_VERSION

SHOULD_FAIL = {"on": True}


@step
async def add_one(x: int) -> int:
    return x + 1


@step
async def flaky(x: int) -> int:
    if SHOULD_FAIL["on"]:
        raise RuntimeError("flaky step is down")
    return x * 10


@workflow(name="cli_test.compute")
async def compute(x: int) -> int:
    a = await add_one(x)
    return await add_one(a)


@workflow(name="cli_test.flaky")
async def flaky_flow(x: int) -> int:
    a = await add_one(x)
    return await flaky(a)


@workflow(name="cli_test.sleepy")
async def sleepy(seconds: float) -> str:
    await add_one(0)
    await perdure.sleep(seconds)
    return "awake"


@pytest.fixture
def runtime(db_url: str) -> Iterator[Perdure]:
    with Perdure(db_url, maintenance_interval=0.05) as app:
        yield app


def cli(db_url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--database-url", db_url, *args], env=env, catch_exceptions=False)


def cli_json(db_url: str, *args: str) -> Any:
    result = cli(db_url, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def perdure_command() -> list[str]:
    script = Path(sys.executable).parent / "perdure"
    return [str(script)] if script.exists() else [sys.executable, "-m", "perdure.cli"]


# -- migrate -------------------------------------------------------------------------------------------


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.sqlite"
    result = cli(url, "migrate")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"schema version {LATEST_VERSION} at {url}"
    assert (tmp_path / "new.sqlite").exists()
    # Again, through the environment variable and the command's own option: idempotent.
    result = CliRunner().invoke(main, ["migrate"], env={"PERDURE_DATABASE_URL": url})
    assert result.exit_code == 0 and f"schema version {LATEST_VERSION}" in result.stdout
    result = CliRunner().invoke(main, ["migrate", "--database-url", url], env={"PERDURE_DATABASE_URL": ""})
    assert result.exit_code == 0 and url in result.stdout


# -- list, show, steps ---------------------------------------------------------------------------------


def test_list_show_and_steps(runtime: Perdure, db_url: str) -> None:
    for i, wid in enumerate(("c-1", "c-2", "c-3")):
        assert runtime.start_sync(compute, i, workflow_id=wid).result_sync(timeout=10) == i + 2
        time.sleep(0.002)  # distinct creation times for the ordering checks
    SHOULD_FAIL["on"] = True
    with pytest.raises(RuntimeError, match="flaky step is down"):
        runtime.start_sync(flaky_flow, 5, workflow_id="f-1").result_sync(timeout=10)

    rows = cli_json(db_url, "workflows", "list")
    assert [r["workflow_id"] for r in rows] == ["f-1", "c-3", "c-2", "c-1"]
    assert {r["status"] for r in rows} == {"SUCCESS", "ERROR"}
    assert [r["workflow_id"] for r in cli_json(db_url, "workflows", "list", "--oldest")] == ["c-1", "c-2", "c-3", "f-1"]
    assert [r["workflow_id"] for r in cli_json(db_url, "workflows", "list", "--status", "error")] == ["f-1"]
    both = cli_json(db_url, "workflows", "list", "--status", "ERROR", "--status", "SUCCESS")
    assert len(both) == 4
    assert [r["workflow_id"] for r in cli_json(db_url, "workflows", "list", "--name", "cli_test.compute")] == [
        "c-3",
        "c-2",
        "c-1",
    ]
    page = cli_json(db_url, "workflows", "list", "--limit", "2", "--offset", "1")
    assert [r["workflow_id"] for r in page] == ["c-3", "c-2"]

    table = cli(db_url, "workflows", "list")
    assert table.exit_code == 0
    for wid in ("c-1", "c-2", "c-3", "f-1"):
        assert wid in table.stdout
    assert "cli_test.compute" in table.stdout and "ERROR" in table.stdout

    shown = cli_json(db_url, "workflows", "show", "c-2")
    assert shown["workflow_id"] == "c-2"
    assert shown["status"] == "SUCCESS"
    assert shown["inputs"] == {"x": 1}
    assert shown["output"] == 3
    assert shown["name"] == "cli_test.compute"
    assert shown["completed_at"] is not None
    failed = cli_json(db_url, "workflows", "show", "f-1")
    assert failed["status"] == "ERROR"
    assert failed["error"] == "RuntimeError: flaky step is down"
    assert "flaky step is down" in cli(db_url, "workflows", "show", "f-1").stdout
    text = cli(db_url, "workflows", "show", "c-2").stdout
    assert "c-2" in text and "SUCCESS" in text and '{"x":1}' in text

    steps = cli_json(db_url, "workflows", "steps", "c-2")
    assert [(s["step_id"], s["name"], s["status"], s["output"]) for s in steps] == [
        (0, "add_one", "SUCCESS", 2),
        (1, "add_one", "SUCCESS", 3),
    ]
    failed_steps = cli_json(db_url, "workflows", "steps", "f-1")
    assert [(s["name"], s["status"]) for s in failed_steps] == [("add_one", "SUCCESS"), ("flaky", "ERROR")]
    assert failed_steps[1]["error"] == "RuntimeError: flaky step is down"
    steps_table = cli(db_url, "workflows", "steps", "c-2").stdout
    assert "add_one" in steps_table and "SUCCESS" in steps_table


# -- steering --------------------------------------------------------------------------------------------


def test_cancel_then_resume(runtime: Perdure, db_url: str) -> None:
    handle = runtime.start_sync(sleepy, 0.6, workflow_id="s-1")
    result = cli(db_url, "workflows", "cancel", "s-1")
    assert result.exit_code == 0, result.stderr
    assert "cancelled workflow 's-1'" in result.stdout
    with pytest.raises(WorkflowCancelled):
        handle.result_sync(timeout=10)
    assert cli_json(db_url, "workflows", "show", "s-1")["status"] == "CANCELLED"
    again = cli(db_url, "workflows", "cancel", "s-1")  # idempotent
    assert again.exit_code == 0

    result = cli(db_url, "workflows", "resume", "s-1")
    assert result.exit_code == 0, result.stderr
    assert "resumed workflow 's-1'" in result.stdout
    # The Client queued it; the runtime (which has the code) picks it up and finishes it.
    assert runtime.retrieve_sync("s-1").result_sync(timeout=10) == "awake"
    assert cli_json(db_url, "workflows", "show", "s-1")["status"] == "SUCCESS"

    finished = cli(db_url, "workflows", "cancel", "s-1")
    assert_one_line_error(finished, "already finished (SUCCESS)")
    not_resumable = cli(db_url, "workflows", "resume", "s-1")
    assert_one_line_error(not_resumable, "'s-1' is SUCCESS")


def test_resume_a_failed_workflow(runtime: Perdure, db_url: str) -> None:
    SHOULD_FAIL["on"] = True
    with pytest.raises(RuntimeError):
        runtime.start_sync(flaky_flow, 1, workflow_id="r-1").result_sync(timeout=10)
    SHOULD_FAIL["on"] = False
    result = cli(db_url, "workflows", "resume", "r-1")
    assert result.exit_code == 0, result.stderr
    assert runtime.retrieve_sync("r-1").result_sync(timeout=10) == 20
    steps = cli_json(db_url, "workflows", "steps", "r-1")
    assert [(s["name"], s["status"], s["output"]) for s in steps] == [
        ("add_one", "SUCCESS", 2),
        ("flaky", "SUCCESS", 20),
    ]


def test_fork(runtime: Perdure, db_url: str) -> None:
    assert runtime.start_sync(compute, 10, workflow_id="src").result_sync(timeout=10) == 12
    original = cli_json(db_url, "workflows", "steps", "src")
    result = cli(db_url, "workflows", "fork", "src", "--from-step", "1", "--new-id", "forked")
    assert result.exit_code == 0, result.stderr
    assert "'forked'" in result.stdout
    assert runtime.retrieve_sync("forked").result_sync(timeout=10) == 12
    shown = cli_json(db_url, "workflows", "show", "forked")
    assert shown["forked_from"] == "src"
    assert shown["inputs"] == {"x": 10}
    steps = cli_json(db_url, "workflows", "steps", "forked")
    assert [s["output"] for s in steps] == [11, 12]
    # Step 0 was copied from the source (same checkpoint), step 1 ran again.
    assert steps[0]["completed_at"] == original[0]["completed_at"]
    assert steps[1]["completed_at"] != original[1]["completed_at"]

    generated = cli(db_url, "workflows", "fork", "src", "--from-step", "0")
    assert generated.exit_code == 0, generated.stderr
    assert len(cli_json(db_url, "workflows", "list", "--name", "cli_test.compute")) == 3

    taken = cli(db_url, "workflows", "fork", "src", "--from-step", "0", "--new-id", "forked")
    assert_one_line_error(taken, "'forked' already exists")
    negative = cli(db_url, "workflows", "fork", "src", "--from-step", "-1")
    assert negative.exit_code == 2


def test_delete_by_id_and_by_age(runtime: Perdure, db_url: str) -> None:
    for wid in ("d-1", "d-2", "d-3"):
        runtime.start_sync(compute, 1, workflow_id=wid).result_sync(timeout=10)
    running = runtime.start_sync(sleepy, 30, workflow_id="d-running")

    result = cli(db_url, "workflows", "delete", "d-1")
    assert result.exit_code == 0, result.stderr
    assert "deleted 1 workflow(s)" in result.stdout
    assert_one_line_error(cli(db_url, "workflows", "show", "d-1"), "no workflow with id 'd-1'")

    result = cli(db_url, "workflows", "delete", "d-2", "d-running", "ghost")
    assert result.exit_code == 1
    assert "deleted 1 workflow(s)" in result.stdout
    assert "'d-running': it is PENDING" in result.stderr
    assert "'ghost': no such workflow" in result.stderr
    assert cli_json(db_url, "workflows", "show", "d-running")["status"] == "PENDING"

    kept = cli(db_url, "workflows", "delete", "--older-than", "1h")
    assert kept.exit_code == 0 and "deleted 0 finished" in kept.stdout
    time.sleep(0.01)
    gone = cli(db_url, "workflows", "delete", "--older-than", "0")
    assert gone.exit_code == 0 and "deleted 1 finished" in gone.stdout
    assert [r["workflow_id"] for r in cli_json(db_url, "workflows", "list")] == ["d-running"]

    assert cli(db_url, "workflows", "delete").exit_code == 2
    assert cli(db_url, "workflows", "delete", "x", "--older-than", "5").exit_code == 2
    assert cli(db_url, "workflows", "delete", "--older-than", "soon").exit_code == 2
    cli(db_url, "workflows", "cancel", "d-running")
    with pytest.raises(WorkflowCancelled):
        running.result_sync(timeout=10)


# -- errors ----------------------------------------------------------------------------------------------


def test_unknown_workflow_is_one_line(runtime: Perdure, db_url: str) -> None:
    for args in (
        ("workflows", "show", "nope"),
        ("workflows", "show", "nope", "--json"),
        ("workflows", "steps", "nope"),
        ("workflows", "cancel", "nope"),
        ("workflows", "resume", "nope"),
        ("workflows", "fork", "nope", "--from-step", "0"),
    ):
        assert_one_line_error(cli(db_url, *args), "no workflow with id 'nope'")


def test_bad_database_urls_are_one_line(tmp_path: Path) -> None:
    missing_folder = f"sqlite:///{tmp_path}/no/such/folder/db.sqlite"
    assert_one_line_error(cli(missing_folder, "workflows", "list"), "folder", "does not exist")
    assert_one_line_error(cli(missing_folder, "migrate"), "does not exist")
    assert_one_line_error(cli("mysql://localhost/x", "workflows", "list"), "unsupported database URL")
    assert_one_line_error(cli("sqlite:///:memory:", "migrate"), "names no file")
    # A read command never creates a database by accident.
    assert_one_line_error(cli(f"sqlite:///{tmp_path}/typo.sqlite", "workflows", "list"), "no database at")
    assert not (tmp_path / "typo.sqlite").exists()
    not_a_db = tmp_path / "garbage.sqlite"
    not_a_db.write_bytes(b"this is not a database" * 100)
    assert_one_line_error(cli(f"sqlite:///{not_a_db}", "workflows", "list"), "cannot open SQLite database")


# -- the installed command, in a real process ------------------------------------------------------------


def test_real_process(runtime: Perdure, db_url: str) -> None:
    assert runtime.start_sync(compute, 41, workflow_id="proc-1").result_sync(timeout=10) == 43
    env = dict(os.environ)
    env["PERDURE_DATABASE_URL"] = db_url
    done = subprocess.run(
        [*perdure_command(), "workflows", "list", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [(r["workflow_id"], r["output"]) for r in json.loads(done.stdout)] == [("proc-1", 43)]

    done = subprocess.run(
        [sys.executable, "-m", "perdure.cli", "workflows", "steps", "proc-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "add_one" in done.stdout and "43" in done.stdout

    failed = subprocess.run(
        [*perdure_command(), "workflows", "show", "missing-id"], capture_output=True, text=True, env=env, timeout=60
    )
    assert failed.returncode == 1
    assert failed.stderr == "error: no workflow with id 'missing-id'\n"
    assert failed.stdout == ""

    bad = subprocess.run(
        [*perdure_command(), "--database-url", "sqlite:////definitely/not/here/x.sqlite", "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: cannot open SQLite database")
