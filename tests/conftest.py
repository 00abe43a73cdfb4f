"""Shared fixtures: a fresh database per test (SQLite file, and PostgreSQL once its store exists)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from perdure import Perdure  # noqa: E402


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/perdure.sqlite"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The database every engine test runs against."""
    return sqlite_url


@pytest.fixture
async def app(db_url: str) -> AsyncIterator[Perdure]:
    runtime = Perdure(db_url, maintenance_interval=0.05)
    async with runtime:
        yield runtime


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def child_env(repo_root: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root / "tests"), env.get("PYTHONPATH", "")])
    yield env
