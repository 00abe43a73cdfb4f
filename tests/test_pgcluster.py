"""Tests for tests/pgcluster.py, the throwaway PostgreSQL server helper."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # tests/ is not a package; no conftest needed for this import
    sys.path.insert(0, _TESTS)
from pgcluster import PgCluster, available  # noqa: E402

pytestmark = pytest.mark.postgres


def _require_postgres() -> None:
    reason = available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    _require_postgres()
    with PgCluster() as pg:  # durable defaults
        yield pg


def test_connect_insert_restart_keeps_data(cluster: PgCluster) -> None:
    assert cluster.url == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    assert cluster.port != 5432
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW max_connections").fetchone() == ("200",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(cluster.tmp_dir),)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")

    old_pid = cluster.pid
    cluster.restart()  # pg_ctl restart -m fast
    assert cluster.pid != old_pid

    with psycopg.connect(cluster.url) as conn:
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "b")]


def test_create_database_is_isolated(cluster: PgCluster) -> None:
    url_a = cluster.create_database("iso_a")
    url_b = cluster.create_database("iso_b")
    assert url_a.endswith("/iso_a") and url_b.endswith("/iso_b")
    with psycopg.connect(url_a, autocommit=True) as conn:
        conn.execute("CREATE TABLE only_in_a (x int)")
    with psycopg.connect(url_b) as conn:
        assert conn.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)

    # random name when none given
    url_c = cluster.create_database()
    with psycopg.connect(url_c) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0].startswith("db_")

    idle = psycopg.connect(url_a)  # an open session does not block the drop
    try:
        cluster.drop_database("iso_a")
    finally:
        idle.close()
    cluster.drop_database("iso_a")  # no error when already gone
    with psycopg.connect(cluster.url) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert "iso_a" not in names and "iso_b" in names


def test_extra_conf_and_stop_removes_everything() -> None:
    _require_postgres()
    pg = PgCluster(extra_conf={"fsync": "off", "synchronous_commit": "off"})
    with pg:
        tmp, data = pg.tmp_dir, pg.data_dir
        assert (data / "PG_VERSION").read_text().strip() == "15"
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
        url = pg.url
    assert not tmp.exists()
    assert not pg.running
    pg.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()


def test_start_failure_reports_log_tail() -> None:
    _require_postgres()
    pg = PgCluster(extra_conf={"shared_buffers": "not-a-size"})
    with pytest.raises(RuntimeError) as info:
        pg.start()
    msg = str(info.value)
    assert "server log tail" in msg and "shared_buffers" in msg
    assert not pg.running


def test_managed_settings_rejected() -> None:
    with pytest.raises(ValueError, match="port"):
        PgCluster(extra_conf={"port": "5432"})
