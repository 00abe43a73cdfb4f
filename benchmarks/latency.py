"""Send → wake latency: how long a workflow waiting in `recv` takes to wake after a message is sent.

    .venv/bin/python benchmarks/latency.py                         # SQLite and PostgreSQL, perdure and DBOS
    .venv/bin/python benchmarks/latency.py --backend sqlite --systems perdure -n 200
    .venv/bin/python benchmarks/latency.py --pg-url postgresql://postgres@127.0.0.1:5432/postgres

For each (system, backend, sender) the driver runs a fresh child process on a fresh database. The child
launches the runtime and starts one receiving workflow that, `n` times, sets event `ready` = i and then
waits in `recv`. The sender waits until `ready` == i, then 10 ms more (so the receiver is idle in its
wait, not about to ask), takes `t = time.monotonic()` and sends `{"t": t}`. The workflow takes
`time.monotonic()` as soon as `recv` returns; the latency is the difference (CLOCK_MONOTONIC is one
clock for every process of the machine). It covers the send's commit, the wake-up, and the receive's
commit (the message is consumed in the transaction that checkpoints it).

Senders: `same process` (perdure.send / DBOS.send_async from the runtime's process, outside the
workflow) and `other process` (perdure.Client / DBOSClient in a child process: on SQLite the waiter
notices by polling, on PostgreSQL by LISTEN/NOTIFY). PostgreSQL is a throwaway server from
tests/pgcluster.py with durable defaults (fsync on) unless --pg-url is given. Prints a markdown table
of median, p90, p99 and max in ms; not asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

IDLE_BEFORE_SEND = 0.010


# -- the sender (same or other process) -----------------------------------------------------------------


async def perdure_sender(client: Any, wid: str, n: int) -> None:
    for i in range(n):
        while await client.get_event(wid, "ready", timeout=30) != i:
            await asyncio.sleep(0.001)
        await asyncio.sleep(IDLE_BEFORE_SEND)
        await client.send(wid, {"t": time.monotonic()})


async def dbos_sender(get_event: Any, send: Any, wid: str, n: int) -> None:
    for i in range(n):
        while await get_event(wid, "ready") != i:
            await asyncio.sleep(0.001)
        await asyncio.sleep(IDLE_BEFORE_SEND)
        await send(wid, {"t": time.monotonic()})


def sender_main(spec: dict[str, Any]) -> None:
    if spec["system"] == "perdure":
        from perdure import Client

        async def go() -> None:
            async with Client(spec["url"]) as client:
                await perdure_sender(client, spec["wid"], spec["n"])

        asyncio.run(go())
        return
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=spec["dbos_url"])

    async def get_event(wid: str, key: str) -> Any:
        return await client.get_event_async(wid, key, timeout_seconds=0)

    async def send(wid: str, message: Any) -> None:
        await client.send_async(wid, message)

    try:
        asyncio.run(dbos_sender(get_event, send, spec["wid"], spec["n"]))
    finally:
        client.destroy()


def spawn_sender(spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--sender", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the receiver (one child per measurement) -----------------------------------------------------------


def summary(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * p))]

    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def perdure_child(spec: dict[str, Any]) -> list[float]:
    import perdure
    from perdure import Perdure, workflow

    latencies: list[float] = []

    @workflow(name="bench.receiver")
    async def receiver(n: int) -> int:
        for i in range(n):
            await perdure.set_event("ready", i)
            message = await perdure.recv(timeout=60)
            latencies.append(time.monotonic() - message["t"])  # a benchmark probe, not durable state
        return n

    async def go() -> None:
        async with Perdure(spec["url"]) as app:
            handle = await app.start(receiver, spec["n"], workflow_id="receiver")
            if spec["sender"] == "same":
                await perdure_sender(app, "receiver", spec["n"])
            else:
                proc = spawn_sender({**spec, "wid": "receiver"})
                _, err = await asyncio.to_thread(proc.communicate)
                if proc.returncode != 0:
                    raise RuntimeError(f"sender failed:\n{err}")
            await handle.result(timeout=60)

    asyncio.run(go())
    return latencies


def dbos_child(spec: dict[str, Any]) -> list[float]:
    from dbos import DBOS, SetWorkflowID

    DBOS(config={"name": "perdure-latency", "system_database_url": spec["dbos_url"], "log_level": "WARNING"})
    latencies: list[float] = []

    @DBOS.workflow(name="bench.receiver")
    async def receiver(n: int) -> int:
        for i in range(n):
            await DBOS.set_event_async("ready", i)
            message = await DBOS.recv_async(timeout_seconds=60)
            latencies.append(time.monotonic() - message["t"])
        return n

    async def go() -> None:
        DBOS.launch()
        with SetWorkflowID("receiver"):
            handle = await DBOS.start_workflow_async(receiver, spec["n"])
        if spec["sender"] == "same":

            async def get_event(wid: str, key: str) -> Any:
                return await DBOS.get_event_async(wid, key, timeout_seconds=0)

            await dbos_sender(get_event, DBOS.send_async, "receiver", spec["n"])
        else:
            proc = spawn_sender({**spec, "wid": "receiver"})
            _, err = await asyncio.to_thread(proc.communicate)
            if proc.returncode != 0:
                raise RuntimeError(f"sender failed:\n{err}")
        await handle.get_result()

    try:
        asyncio.run(go())
    finally:
        DBOS.destroy()
    return latencies


def child_main(spec: dict[str, Any]) -> None:
    try:
        samples = perdure_child(spec) if spec["system"] == "perdure" else dbos_child(spec)
        out = {**spec, "status": "ok", **summary(samples)}
    except Exception as exc:  # reported in the table, not raised
        out = {**spec, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)


# -- the driver -----------------------------------------------------------------------------------------


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
    )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return {**spec, "status": "error", "error": proc.stderr.strip()[-500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="all", choices=["sqlite", "postgres", "all"])
    ap.add_argument("--systems", default="perdure,dbos")
    ap.add_argument("-n", type=int, default=100, help="messages per measurement (default 100)")
    ap.add_argument("--dbos-sqlite-n", type=int, default=20, help="messages for DBOS on SQLite (it polls each 1 s)")
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sender", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.sender:
        sender_main(json.loads(args.sender))
        return 0

    from _pgserver import PgServer

    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    pg: PgServer | None = None
    if "postgres" in backends:
        if args.pg_url:
            pg = PgServer.from_url(args.pg_url)
        else:
            pg, why = PgServer.throwaway()
            if pg is None:
                print(f"note: PostgreSQL skipped: {why}", file=sys.stderr)
                backends.remove("postgres")
    results = []
    try:
        for backend in backends:
            for system in systems:
                for sender in ("same", "other"):
                    n = args.dbos_sqlite_n if (system, backend) == ("dbos", "sqlite") else args.n
                    spec: dict[str, Any] = {"system": system, "backend": backend, "sender": sender, "n": n}
                    dbname = None
                    with tempfile.TemporaryDirectory(prefix="perdure-latency-") as tmp:
                        if backend == "sqlite":
                            path = os.path.join(tmp, "latency.sqlite")
                            spec["url"] = f"sqlite:///{path}"
                            spec["dbos_url"] = f"sqlite:///{path}"
                        else:
                            assert pg is not None
                            dbname, url = pg.create_database()
                            spec["url"] = url
                            spec["dbos_url"] = url
                        print(f"running {system} {backend} sender={sender} n={n} ...", file=sys.stderr)
                        try:
                            results.append(run_child(spec, timeout=300))
                        finally:
                            if dbname is not None and pg is not None:
                                pg.drop_database(dbname)
    finally:
        if pg is not None:
            pg.close()

    print(f"\nsend → wake latency, ms ({time.strftime('%Y-%m-%d %H:%M')}, loadavg {os.getloadavg()[0]:.2f})\n")
    print("| system | backend | sender | n | median | p90 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        where = "same process" if r["sender"] == "same" else "other process"
        if r["status"] != "ok":
            print(f"| {r['system']} | {r['backend']} | {where} | - | error: {r.get('error', '')[:80]} | | | |")
            continue
        print(
            f"| {r['system']} | {r['backend']} | {where} | {r['n']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['max_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
