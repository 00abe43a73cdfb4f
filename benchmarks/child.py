"""One benchmark measurement, in a fresh process, on a fresh database.

Started by run.py; not meant to be run by hand, although it can be:

    python benchmarks/child.py '{"backend": "sqlite", "system": "floor", "variant": "wal-full",
                                 "scenario": "d", "db": "/tmp/x.sqlite", "params": {"duration": 1}}'

It prints exactly one JSON object on one line (the last line of stdout), with "status" one of
"ok", "skipped" (the system cannot run yet: perdure's core or PG store not there) or "error".

Scenarios (see README.md):
  a  sequential workflows with no steps, for at least `duration` seconds     -> workflows/s
  b  one workflow with `steps` no-op steps                                   -> µs per step
  c  `workflows` concurrent workflows x `steps` no-op steps                  -> steps/s
  d  bare one-row INSERT + COMMIT (the floor), for at least `duration` s     -> commits/s
  e.geo, e.trip  sequential runs of one agent (see _agents.py) for at least `duration` s
                 -> µs per agent run: plain pydantic-ai ("plain"), perdure or DBOS, each either
                 through its agent wrapper (variant "agent...") or its capability ("capability...");
                 perdure "...-inline-..." marks the tools {"perdure": False} (no tool checkpoints)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

UNIT_OP = {"a": "workflow", "b": "step", "c": "step", "d": "commit", "e.geo": "agent run", "e.trip": "agent run"}


class Skip(Exception):
    """The system/config cannot run here (not an error in the benchmark)."""


class Clock:
    """Wall time and process CPU time (all threads) of one measured section."""

    def __enter__(self) -> Clock:
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def metric(ops: int, clock: Clock, **extra: Any) -> dict[str, Any]:
    return {
        "ops": ops,
        "elapsed_s": clock.elapsed,
        "cpu_s": clock.cpu,
        "rate": ops / clock.elapsed,
        "us_per_op": clock.elapsed / ops * 1e6,
        "cpu_us_per_op": clock.cpu / ops * 1e6,
        **extra,
    }


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Shared drivers: the same loop shapes for every system, so only the calls differ.
# --------------------------------------------------------------------------------------------


def sync_loop_for(call: Callable[[], object], duration: float, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        call()
    n = 0
    with Clock() as clk:
        deadline = time.perf_counter() + duration
        while True:
            call()
            n += 1
            if time.perf_counter() >= deadline:
                break
    return metric(n, clk)


async def async_loop_for(call: Callable[[], Awaitable[object]], duration: float, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        await call()
    n = 0
    with Clock() as clk:
        deadline = time.perf_counter() + duration
        while True:
            await call()
            n += 1
            if time.perf_counter() >= deadline:
                break
    return metric(n, clk)


async def async_samples_for(call: Callable[[], Awaitable[object]], duration: float, warmup: int) -> dict[str, Any]:
    """`async_loop_for`, also timing each call: adds the median (and p90) wall and CPU µs of one call."""
    for _ in range(warmup):
        await call()
    walls: list[float] = []
    cpus: list[float] = []
    perf, cpu = time.perf_counter, time.process_time
    with Clock() as clk:
        deadline = perf() + duration
        while True:
            t0, c0 = perf(), cpu()
            await call()
            t1, c1 = perf(), cpu()
            walls.append((t1 - t0) * 1e6)
            cpus.append((c1 - c0) * 1e6)
            if t1 >= deadline:
                break
    walls.sort()
    return metric(
        len(walls),
        clk,
        us_run_median=statistics.median(walls),
        us_run_p90=walls[min(len(walls) - 1, int(len(walls) * 0.9))],
        cpu_us_run_median=statistics.median(cpus),
    )


def check(value: object, expected: object) -> None:
    if value != expected:
        raise RuntimeError(f"workflow returned {value!r}, expected {expected!r}")


# --------------------------------------------------------------------------------------------
# DBOS
# --------------------------------------------------------------------------------------------


def dbos_config(spec: dict[str, Any]) -> Any:
    url = spec["db"]
    if spec["backend"] == "sqlite":
        url = f"sqlite:///{url}"  # absolute path -> sqlite:////abs/path, DBOS's default file mode
    return {"name": "perdure-bench", "system_database_url": url, "log_level": "WARNING"}


def run_dbos(spec: dict[str, Any]) -> None:
    if spec["scenario"].startswith("e."):
        return run_dbos_agent(spec)
    import _dbos_workflows as w
    from dbos import DBOS, DBOSConfig

    p = spec["params"]
    config: DBOSConfig = dbos_config(spec)
    DBOS(config=config)
    scenario = spec["scenario"]

    if spec["variant"] == "sync":
        DBOS.launch()
        try:
            if scenario == "a":
                out = sync_loop_for(w.empty_wf_sync, p["duration"], p["warmup"])
            elif scenario == "b":
                check(w.steps_wf_sync(p["warmup"]), p["warmup"])
                with Clock() as clk:
                    check(w.steps_wf_sync(p["steps"]), p["steps"])
                out = metric(p["steps"], clk)
            elif scenario == "c":
                check(w.steps_wf_sync(p["warmup"]), p["warmup"])
                with Clock() as clk:
                    handles = [DBOS.start_workflow(w.steps_wf_sync, p["steps"]) for _ in range(p["workflows"])]
                    for h in handles:
                        check(h.get_result(), p["steps"])
                out = metric(p["workflows"] * p["steps"], clk)
            else:
                raise ValueError(scenario)
            emit({**spec, "status": "ok", **out})
        finally:
            DBOS.destroy()
        return

    async def main() -> dict[str, Any]:
        DBOS.launch()  # on the running loop: async workflows run as tasks of this loop
        if scenario == "a":
            return await async_loop_for(w.empty_wf_async, p["duration"], p["warmup"])
        if scenario == "b":
            check(await w.steps_wf_async(p["warmup"]), p["warmup"])
            with Clock() as clk:
                check(await w.steps_wf_async(p["steps"]), p["steps"])
            return metric(p["steps"], clk)
        if scenario == "c":
            check(await w.steps_wf_async(p["warmup"]), p["warmup"])
            with Clock() as clk:
                handles = await asyncio.gather(
                    *(DBOS.start_workflow_async(w.steps_wf_async, p["steps"]) for _ in range(p["workflows"]))
                )
                results = await asyncio.gather(*(h.get_result() for h in handles))
            for r in results:
                check(r, p["steps"])
            return metric(p["workflows"] * p["steps"], clk)
        raise ValueError(scenario)

    try:
        out = asyncio.run(main())
        emit({**spec, "status": "ok", **out})
    finally:
        DBOS.destroy()


# --------------------------------------------------------------------------------------------
# perdure
# --------------------------------------------------------------------------------------------


def perdure_url(spec: dict[str, Any]) -> str:
    if spec["backend"] == "sqlite":
        # variant "FULL" (a-c) or "<api>-FULL" (e): the synchronous= level is the last part
        return f"sqlite:///{spec['db']}?synchronous={spec['variant'].rsplit('-', 1)[-1]}"
    return str(spec["db"])


def run_perdure(spec: dict[str, Any]) -> None:
    if spec["scenario"].startswith("e."):
        return run_perdure_agent(spec)
    # Benchmark the working tree, not whatever may be installed.
    sys.path.insert(0, str(REPO / "src"))
    try:
        import _perdure_workflows as w

        from perdure import Perdure
    except ImportError as e:
        raise Skip(f"perdure not importable yet ({type(e).__name__}: {e})") from e

    p = spec["params"]
    url = perdure_url(spec)
    try:
        app = Perdure(url)
    except Exception as e:
        raise Skip(f"Perdure({url!r}) raised {type(e).__name__}: {e}") from e
    scenario = spec["scenario"]

    async def main() -> None:
        async with app:
            if scenario == "a":
                out = await async_loop_for(w.empty_wf, p["duration"], p["warmup"])
            elif scenario == "b":
                check(await w.steps_wf(p["warmup"]), p["warmup"])
                with Clock() as clk:
                    check(await w.steps_wf(p["steps"]), p["steps"])
                out = metric(p["steps"], clk)
            elif scenario == "c":
                check(await w.steps_wf(p["warmup"]), p["warmup"])
                with Clock() as clk:
                    handles = await asyncio.gather(*(app.start(w.steps_wf, p["steps"]) for _ in range(p["workflows"])))
                    results = await asyncio.gather(*(h.result() for h in handles))
                for r in results:
                    check(r, p["steps"])
                out = metric(p["workflows"] * p["steps"], clk)
            else:
                raise ValueError(scenario)
            emit({**spec, "status": "ok", **out})

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Agents (e): the same agent run sequentially, plain or durable. Each child measures one agent
# (params["agent"]: geo or trip) through one API.
# --------------------------------------------------------------------------------------------


def agent_case(spec: dict[str, Any]) -> tuple[str, str, str]:
    """(agent kind, prompt, expected output)."""
    import _agents as A

    kind = spec["params"]["agent"]
    return kind, A.AGENTS[kind]["prompt"], A.AGENTS[kind]["expected"]


def agent_api(spec: dict[str, Any]) -> str:
    api = str(spec["variant"]).split("-", 1)[0]  # "agent", "capability" (perdure: "agent-FULL", ...)
    if api not in ("agent", "capability"):
        raise ValueError(f"unknown agent API in variant {spec['variant']!r}")
    return api


def run_plain_agent(spec: dict[str, Any]) -> None:
    import _agents as A

    kind, prompt, expected = agent_case(spec)
    p = spec["params"]
    agent = A.build(kind)

    async def call() -> None:
        check((await agent.run(prompt)).output, expected)

    async def main() -> dict[str, Any]:
        out = await async_samples_for(call, p["duration"], p["warmup"])
        return {**out, "steps_per_run": 0}

    emit({**spec, "status": "ok", **asyncio.run(main())})


def run_dbos_agent(spec: dict[str, Any]) -> None:
    import _agents as A
    from dbos import DBOS, SetWorkflowID

    kind, prompt, expected = agent_case(spec)
    p = spec["params"]
    api = agent_api(spec)
    DBOS(config=dbos_config(spec))
    # Agents and workflows are defined after DBOS() and before DBOS.launch(), as in the seed.
    if api == "agent":
        from pydantic_ai import PydanticAIDeprecationWarning

        with warnings.catch_warnings():
            # DBOSAgent is deprecated in favour of DBOSDurability, but it is the seed's API.
            warnings.simplefilter("ignore", PydanticAIDeprecationWarning)
            from pydantic_ai.durable_exec.dbos import DBOSAgent

            dbos_agent = DBOSAgent(A.build(kind))

        async def run_once() -> str:
            return (await dbos_agent.run(prompt)).output

    else:
        from pydantic_ai.durable_exec.dbos import DBOSDurability

        agent = A.build(kind, [DBOSDurability()])

        @DBOS.workflow(name=f"bench.{kind}")
        async def agent_wf(prompt: str) -> str:
            return (await agent.run(prompt)).output

        async def run_once() -> str:
            return await agent_wf(prompt)

    async def call() -> None:
        check(await run_once(), expected)

    async def main() -> dict[str, Any]:
        DBOS.launch()  # on the running loop, as in the seed
        out = await async_samples_for(call, p["duration"], p["warmup"])
        wid = f"bench-steps-{uuid.uuid4().hex}"  # one more run, untimed, to count its steps
        with SetWorkflowID(wid):
            await call()
        steps = await DBOS.list_workflow_steps_async(wid)
        return {**out, "steps_per_run": len(steps), "step_names": [s["function_name"] for s in steps]}

    try:
        emit({**spec, "status": "ok", **asyncio.run(main())})
    finally:
        DBOS.destroy()


def run_perdure_agent(spec: dict[str, Any]) -> None:
    sys.path.insert(0, str(REPO / "src"))
    import _agents as A

    try:
        from perdure import Perdure, workflow
        from perdure.pydantic_ai import DurableAgent, PerdureDurability
    except ImportError as e:
        raise Skip(f"perdure.pydantic_ai not importable yet ({type(e).__name__}: {e})") from e

    kind, prompt, expected = agent_case(spec)
    p = spec["params"]
    api = agent_api(spec)
    url = perdure_url(spec)
    try:
        app = Perdure(url)
    except Exception as e:
        raise Skip(f"Perdure({url!r}) raised {type(e).__name__}: {e}") from e
    # Agents and workflows are defined before launch (`async with app`), as DurableAgent requires.
    inline = "inline" in spec["variant"].split("-")  # tools run without a checkpoint, as in DBOS
    if api == "agent":
        durable = DurableAgent(A.build(kind, inline_tools=inline))

        async def run_once(workflow_id: str | None = None) -> str:
            return (await durable.run(prompt, workflow_id=workflow_id)).output

    else:
        agent = A.build(kind, [PerdureDurability()], inline_tools=inline)

        @workflow(name=f"bench.{kind}")
        async def agent_wf(prompt: str) -> str:
            return (await agent.run(prompt)).output

        async def run_once(workflow_id: str | None = None) -> str:
            if workflow_id is None:
                return await agent_wf(prompt)
            return await (await app.start(agent_wf, prompt, workflow_id=workflow_id)).result()  # type: ignore[no-any-return]

    async def call() -> None:
        check(await run_once(), expected)

    async def main() -> None:
        async with app:
            out = await async_samples_for(call, p["duration"], p["warmup"])
            wid = f"bench-steps-{uuid.uuid4().hex}"  # one more run, untimed, to count its steps
            check(await run_once(wid), expected)
            steps = await app.list_steps(wid)
            emit({**spec, "status": "ok", **out, "steps_per_run": len(steps), "step_names": [s.name for s in steps]})

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Floor: one-row INSERT + COMMIT, no framework
# --------------------------------------------------------------------------------------------

SQLITE_MODES = {
    "wal-normal": ("WAL", "NORMAL"),
    "wal-full": ("WAL", "FULL"),
    "delete-full": ("DELETE", "FULL"),  # rollback journal: the mode DBOS leaves its file in
}


def run_floor_sqlite(spec: dict[str, Any]) -> dict[str, Any]:
    import sqlite3

    journal, sync = SQLITE_MODES[spec["variant"]]
    p = spec["params"]
    con = sqlite3.connect(spec["db"], isolation_level=None)  # we issue BEGIN/COMMIT ourselves
    got = con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
    if got.upper() != journal:
        raise RuntimeError(f"journal_mode {journal} refused (got {got})")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, wf TEXT NOT NULL, n INTEGER NOT NULL, v TEXT)")
    ins = "INSERT INTO t (wf, n, v) VALUES (?, ?, ?)"
    i = 0

    def commit_one() -> None:
        nonlocal i
        i += 1
        con.execute("BEGIN IMMEDIATE")
        con.execute(ins, ("wf-0123456789abcdef", i, "null"))
        con.execute("COMMIT")

    out = sync_loop_for(commit_one, p["duration"], p["warmup"])
    con.close()
    out["sqlite_version"] = sqlite3.sqlite_version
    out["pragmas"] = f"journal_mode={journal}, synchronous={sync}"
    return out


def run_floor_pg(spec: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    p = spec["params"]
    con = psycopg.connect(spec["db"], autocommit=True)
    con.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, wf TEXT NOT NULL, n BIGINT NOT NULL, v TEXT)")
    ins = "INSERT INTO t (wf, n, v) VALUES (%s, %s, %s)"
    i = 0

    def txn() -> None:  # BEGIN, INSERT, COMMIT: three round trips, one WAL flush
        nonlocal i
        i += 1
        with con.transaction():
            con.execute(ins, ("wf-0123456789abcdef", i, "null"))

    def autocommit() -> None:  # one round trip, one WAL flush
        nonlocal i
        i += 1
        con.execute(ins, ("wf-0123456789abcdef", i, "null"))

    fn = {"txn": txn, "autocommit": autocommit}[spec["variant"]]
    out = sync_loop_for(fn, p["duration"], p["warmup"])
    settings = {
        k: con.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
        for k in ("synchronous_commit", "fsync", "wal_sync_method")
    }
    out["server_version"] = con.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    out["pg_settings"] = settings
    con.close()
    return out


def run_floor(spec: dict[str, Any]) -> None:
    out = run_floor_sqlite(spec) if spec["backend"] == "sqlite" else run_floor_pg(spec)
    emit({**spec, "status": "ok", **out})


# --------------------------------------------------------------------------------------------


def is_not_ready(exc: BaseException) -> bool:
    """NotImplementedError (or an ImportError) anywhere in the chain: the code is not there yet."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, NotImplementedError | ImportError | Skip):
            return True
        e = e.__cause__ or e.__context__
    return False


def main() -> int:
    spec = json.loads(sys.argv[1])
    spec["unit_op"] = UNIT_OP[spec["scenario"]]
    spec["pid"] = os.getpid()
    runner = {"dbos": run_dbos, "perdure": run_perdure, "floor": run_floor, "plain": run_plain_agent}[spec["system"]]
    try:
        runner(spec)
    except BaseException as e:  # report everything as one JSON line; the driver decides
        if isinstance(e, KeyboardInterrupt):
            raise
        status = "skipped" if is_not_ready(e) else "error"
        reason = str(e) if isinstance(e, Skip) else f"{type(e).__name__}: {e}"
        emit(
            {
                **spec,
                "status": status,
                "reason": reason,
                "traceback": "".join(traceback.format_exception(e))[-4000:],
            }
        )
        return 0 if status == "skipped" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
