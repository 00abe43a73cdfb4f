"""The system database behind the `Store` protocol: `sqlite.py` and `postgres.py`, migrations in SQL."""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import (
    ClaimRequest,
    ExecutorRecord,
    GuardOutcome,
    InsertOutcome,
    StepRecord,
    Store,
    WorkflowFilter,
    WorkflowRecord,
    WorkflowStatus,
)

__all__ = [
    "ClaimRequest",
    "ExecutorRecord",
    "GuardOutcome",
    "InsertOutcome",
    "StepRecord",
    "Store",
    "WorkflowFilter",
    "WorkflowRecord",
    "WorkflowStatus",
    "create_store",
]


def create_store(url: str) -> Store:
    """The store for a database URL: `sqlite:///file.sqlite` or `postgresql://...`."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgreSQL support needs the extra: pip install 'perdure[postgres]' ({exc})"
            ) from exc
        return PostgresStore(url)
    raise ConfigurationError(
        f"unsupported database URL {url!r}: expected sqlite:///path/to/file.sqlite or postgresql://..."
    )
