"""DBOS workflows used by the benchmark children (imported only by DBOS children).

Module-level so DBOS registers them under stable names. Both a sync and an async form of each
workflow exist, because DBOS's sync and async APIs have different costs (see baseline.md).
"""

from __future__ import annotations

from dbos import DBOS


@DBOS.step()
def noop_sync() -> None:
    return None


@DBOS.workflow()
def empty_wf_sync() -> None:
    return None


@DBOS.workflow()
def steps_wf_sync(n: int) -> int:
    for _ in range(n):
        noop_sync()
    return n


@DBOS.step()
async def noop_async() -> None:
    return None


@DBOS.workflow()
async def empty_wf_async() -> None:
    return None


@DBOS.workflow()
async def steps_wf_async(n: int) -> int:
    for _ in range(n):
        await noop_async()
    return n
