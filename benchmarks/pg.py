"""Throwaway PostgreSQL servers for the benchmarks.

The implementation lives in ``tests/pgcluster.py`` (shared with the test suite).
``tests/`` is not a package, so it is imported by path: this module puts
``<repo>/tests`` on ``sys.path`` and re-exports the public names. From a benchmark
script in this directory::

    from pg import PgCluster, available   # benchmarks/ is sys.path[0] for its scripts

or, from anywhere, do the same thing by hand::

    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path("<repo>/tests").resolve()))
    from pgcluster import PgCluster, available

    with PgCluster() as pg:               # durable defaults (fsync on)
        url = pg.create_database("bench")
        ...
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from pgcluster import PG_BIN, PgCluster, available  # noqa: E402

__all__ = ["PG_BIN", "PgCluster", "available"]
