"""Shared fixtures: a fresh database per test (SQLite file, and PostgreSQL once its store exists)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pgcluster
from perdure import Perdure
from pgcluster import PgCluster


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/perdure.sqlite"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL server for the session, started from the machine's binaries."""
    reason = pgcluster.available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(f"no PostgreSQL server binaries: {reason}")
    # Durability settings do not matter to these tests; fault tests start their own server.
    with PgCluster(extra_conf={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh schema on the session's server: isolated like a fresh database, far cheaper."""
    return f"{pg_cluster.url}?schema=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The database every engine test runs against: each such test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


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
