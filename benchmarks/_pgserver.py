"""PostgreSQL plumbing for the benchmark driver: a server, and one fresh database per child.

The server is either the one given by --pg-url (any database on it; the driver connects there to
run CREATE/DROP DATABASE), or a throwaway one started with tests/pgcluster.py's PgCluster (imported
through benchmarks/pg.py, which puts <repo>/tests on sys.path).
"""

from __future__ import annotations

import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def plain_postgres_url(url: str) -> str:
    """postgresql+psycopg://... or postgres://... -> postgresql://... (what libpq and perdure take)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


class PgServer:
    """A PostgreSQL server on which each benchmark child gets a database of its own."""

    def __init__(self, admin_url: str, cluster: Any = None) -> None:
        self.admin_url = plain_postgres_url(admin_url)
        self.cluster = cluster  # a PgCluster this process started (and must stop), or None

    @classmethod
    def from_url(cls, url: str) -> PgServer:
        return cls(url)

    @classmethod
    def throwaway(cls) -> tuple[PgServer | None, str]:
        """Start a throwaway server (durable defaults); (None, why) if that is not possible."""
        try:
            from pg import PgCluster, available  # benchmarks/pg.py -> tests/pgcluster.py
        except Exception as e:
            return None, (
                f"no throwaway server: cannot import PgCluster ({type(e).__name__}: {e}); "
                "pass --pg-url to benchmark PostgreSQL"
            )
        reason = available()
        if reason is not None:
            return None, f"no throwaway server: {reason}"
        cluster = PgCluster()
        try:
            cluster.start()
        except Exception as e:
            return None, f"PgCluster().start() failed: {type(e).__name__}: {e}"
        return cls(str(cluster.url), cluster=cluster), ""

    def close(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.stop()

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def server_info(self) -> dict[str, str]:
        with self._admin() as con:
            return {
                k: str(con.execute(f"SHOW {k}").fetchone()[0])  # type: ignore[index]
                for k in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
            }

    def create_database(self) -> tuple[str, str]:
        """A fresh, empty database: (name, url)."""
        name = "bench_" + uuid.uuid4().hex[:16]
        if self.cluster is not None:
            return name, plain_postgres_url(str(self.cluster.create_database(name)))
        with self._admin() as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return name, with_database(self.admin_url, name)

    def drop_database(self, name: str) -> None:
        try:
            if self.cluster is not None:
                self.cluster.drop_database(name)
                return
            with self._admin() as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as e:  # never fail a benchmark run over cleanup
            print(f"note: could not drop database {name}: {e}", file=sys.stderr)
