"""The examples in `examples/` run as real scripts, offline (`PERDURE_EXAMPLE_MODEL=test`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from perdure import Client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PERDURE_EXAMPLE_MODEL": "test", **env}
    full_env.pop("PERDURE_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=60
    )


def test_seed_example_runs_durably_on_sqlite(tmp_path: Path) -> None:
    done = run_example("seed_geography.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "Mexico City (Ciudad de México, CDMX)"

    # The run was a workflow of the agent, checkpointed in ./perdure.sqlite like the seed's database file.
    with Client(f"sqlite:///{tmp_path / 'perdure.sqlite'}") as client:
        (info,) = client.list_workflows_sync()
        steps = client.list_steps_sync(info.workflow_id)
    assert info.name == "geography.run" and info.status == "SUCCESS"
    assert [s.name for s in steps] == ["geography__model.request"]

    # A second run is a new workflow in the same database.
    again = run_example("seed_geography.py", tmp_path)
    assert again.returncode == 0, again.stderr
    with Client(f"sqlite:///{tmp_path / 'perdure.sqlite'}") as client:
        assert len(client.list_workflows_sync()) == 2


def test_seed_example_model_comes_from_the_environment(tmp_path: Path) -> None:
    source = (EXAMPLES / "seed_geography.py").read_text(encoding="utf-8")
    assert '"openai:gpt-5"' in source and "OPENAI_API_KEY" in source
    done = run_example("seed_geography.py", tmp_path, PERDURE_EXAMPLE_MODEL="nosuch:model")
    assert done.returncode != 0
    assert "Unknown model: nosuch:model" in done.stderr


def test_support_app_starts_runs_streams_events_and_takes_approvals(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("PERDURE_DATABASE_URL", None)
    env.pop("PERDURE_EXAMPLE_MODEL", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "support_app.py"), "--self-test"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting for approval: ['refund']" in done.stdout
    assert "{'approved': True}" in done.stdout
    assert "answer: Done: refunded $30." in done.stdout


def test_approval_example_is_decided_by_another_process(tmp_path: Path) -> None:
    started = run_example("approval.py", tmp_path, "request", "I was charged twice")
    assert started.returncode == 0, started.stderr
    assert "run refund-1 waits for approval" in started.stdout
    with Client(f"sqlite:///{tmp_path / 'perdure.sqlite'}") as client:
        assert client.get_workflow_sync("refund-1").status == "PENDING"  # its process is gone; it waits
    assert "refund-1" in run_example("approval.py", tmp_path, "pending").stdout
    assert not (tmp_path / "refunds.log").exists()

    approved = run_example("approval.py", tmp_path, "approve", "refund-1")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == "Outcome: refunded 30 EUR"
    assert (tmp_path / "refunds.log").read_text() == "30\n"  # the refund ran once
    with Client(f"sqlite:///{tmp_path / 'perdure.sqlite'}") as client:
        steps = [s.name for s in client.list_steps_sync("refund-1")]
    assert steps.count("support__external_event.approve_refund.ask") == 1  # recovery did not ask again

    run_example("approval.py", tmp_path, "request", "again", "refund-2")
    denied = run_example("approval.py", tmp_path, "deny", "refund-2")
    assert denied.stdout.strip() == "Outcome: The tool call was denied."
    assert (tmp_path / "refunds.log").read_text() == "30\n"
