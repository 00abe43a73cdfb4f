"""The examples in `examples/` run as real scripts, offline (`PERDURE_EXAMPLE_MODEL=test`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from perdure import Client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PERDURE_EXAMPLE_MODEL": "test", **env}
    full_env.pop("PERDURE_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=60
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
