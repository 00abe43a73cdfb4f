"""perdure workflows used by the benchmark children (imported only by perdure children).

Module-level so perdure can register them under stable names. Importing this module fails with
ImportError while perdure's core has not landed; the child reports that as a skip.
"""

from __future__ import annotations

from perdure import step, workflow


@step
async def noop() -> None:
    return None


@workflow
async def empty_wf() -> None:
    return None


@workflow
async def steps_wf(n: int) -> int:
    for _ in range(n):
        await noop()
    return n
