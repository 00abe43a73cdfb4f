"""Queue throughput and idle pickup latency: perdure vs DBOS Transact, side by side.

    .venv/bin/python benchmarks/queues.py                           # SQLite and PostgreSQL, 3 reps (~15 min)
    .venv/bin/python benchmarks/queues.py --backend postgres --reps 1 --sizes 2000
    .venv/bin/python benchmarks/queues.py --quick                   # smoke test (~1 min): not a measurement
    .venv/bin/python benchmarks/queues.py --pg-url postgresql://postgres@127.0.0.1:5432/postgres

Every measurement runs in a fresh child process on a fresh database (a SQLite file in a new temp folder, or
a new PostgreSQL database: a throwaway server from tests/pgcluster.py with durable defaults, fsync on,
unless --pg-url is given).

- **drain** (`--sizes`, default 2000 and 5000): N no-op workflows enqueued on a queue with concurrency
  50 (perdure `Queue("bench", concurrency=50)`; DBOS `DBOS.register_queue("bench", global_concurrency=50,
  polling_interval_sec=...)`), as fast as each API allows (`--enqueue concurrent`, the default: perdure
  `asyncio.gather` of the enqueues, DBOS its sync `enqueue` from 16 threads; `--enqueue sequential`: one
  after another in both). Timed from the first enqueue until the body of the N-th workflow has run (the
  same probe in both systems; the last outcome's commit is not in it). Reported as workflows/s; the
  enqueue phase alone is shown too. After a warm-up of 20 workflows through the same queue.
- **latency**: an idle queue; one workflow enqueued, the time from just before the enqueue call until its
  body starts, then the next one after the queue is idle again (10 ms). Median and p99. perdure also from a
  `Client` (own connections: on PostgreSQL the worker wakes by LISTEN/NOTIFY, on SQLite by its 0.1 s poll).

Systems: perdure (SQLite synchronous=FULL, its default), DBOS 3.4 with its default 1 s queue polling, and
DBOS with 0.1 s polling. DBOS runs with its defaults otherwise (`log_level=WARNING`). Prints markdown tables
(median and min-max over the reps, ratio to each DBOS setting) and writes the raw runs to
benchmarks/results/queues-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONCURRENCY = 50
WARMUP = 20
IDLE = 0.010
X = "\u00d7"
DASH = "\u2013"
SYSTEMS = {
    "perdure": "perdure",
    "dbos-1.0": "DBOS, default 1 s polling",
    "dbos-0.1": "DBOS, 0.1 s polling",
}


def summary_ms(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "median_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
        "samples": len(ms),
    }


# -- perdure child ------------------------------------------------------------------------------------------


def perdure_child(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "src"))
    from perdure import Client, Perdure, Queue, workflow

    state: dict[str, Any] = {"count": 0, "target": 0, "last": 0.0, "starts": {}}
    done = asyncio.Event()

    @workflow(name="bench.q.noop")
    async def noop(i: int) -> None:
        state["count"] += 1
        if state["count"] == state["target"]:
            state["last"] = time.perf_counter()
            done.set()

    @workflow(name="bench.q.probe")
    async def probe(i: int) -> None:
        state["starts"][i] = time.perf_counter()
        done.set()

    queue = Queue("bench", concurrency=CONCURRENCY)

    async def enqueue_all(n: int) -> list[Any]:
        if spec.get("enqueue") == "sequential":
            return [await queue.enqueue(noop, i) for i in range(n)]
        return list(await asyncio.gather(*(queue.enqueue(noop, i) for i in range(n))))

    async def drain(n: int) -> None:
        state["count"], state["target"] = 0, n
        done.clear()
        handles = await enqueue_all(n)
        await done.wait()
        await handles[-1].result(timeout=600)

    async def go() -> dict[str, Any]:
        async with Perdure(spec["url"]) as app:
            assert app.launched
            await drain(WARMUP)
            if spec["kind"] == "drain":
                n = spec["n"]
                state["count"], state["target"] = 0, n
                done.clear()
                t0 = time.perf_counter()
                handles = await enqueue_all(n)
                t_enqueued = time.perf_counter()
                await done.wait()
                await handles[-1].result(timeout=600)
                return {"seconds": state["last"] - t0, "enqueue_seconds": t_enqueued - t0}
            out: dict[str, Any] = {}
            async with Client(spec["url"]) as client:
                for via in ("runtime", "client"):
                    samples = []
                    for i in range(spec["samples"] + 5):
                        key = i if via == "runtime" else 100_000 + i
                        await asyncio.sleep(IDLE)
                        done.clear()
                        t = time.perf_counter()
                        if via == "runtime":
                            h = await queue.enqueue(probe, key)
                        else:
                            h = await client.enqueue("bench", "bench.q.probe", key)
                        await done.wait()
                        if i >= 5:  # the first few warm the path up
                            samples.append(state["starts"][key] - t)
                        await app.retrieve(h.workflow_id)
                    stats = summary_ms(samples)
                    out.update(stats if via == "runtime" else {f"client_{k}": v for k, v in stats.items()})
            return out

    return asyncio.run(go())


# -- DBOS child ---------------------------------------------------------------------------------------------


def dbos_child(spec: dict[str, Any]) -> dict[str, Any]:
    from dbos import DBOS

    DBOS(config={"name": "perdure-queues", "system_database_url": spec["dbos_url"], "log_level": "WARNING"})
    lock = threading.Lock()
    state: dict[str, Any] = {"count": 0, "target": 0, "last": 0.0, "starts": {}}
    done = threading.Event()

    @DBOS.workflow(name="bench.q.noop")
    def noop(i: int) -> None:
        with lock:
            state["count"] += 1
            if state["count"] == state["target"]:
                state["last"] = time.perf_counter()
                done.set()

    @DBOS.workflow(name="bench.q.probe")
    def probe(i: int) -> None:
        state["starts"][i] = time.perf_counter()
        done.set()

    DBOS.launch()
    try:
        queue = DBOS.register_queue(
            "bench", global_concurrency=CONCURRENCY, polling_interval_sec=float(spec["system"].split("-")[1])
        )

        def drain(n: int) -> float:
            with lock:
                state["count"], state["target"] = 0, n
            done.clear()
            t0 = time.perf_counter()
            if spec.get("enqueue") == "sequential":
                for i in range(n):
                    queue.enqueue(noop, i)
            else:
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(lambda i: queue.enqueue(noop, i), range(n)))
            t_enqueued = time.perf_counter()
            if not done.wait(timeout=900):
                raise TimeoutError("the queue did not drain")
            return t_enqueued - t0

        drain(WARMUP)
        if spec["kind"] == "drain":
            t0 = time.perf_counter()
            enqueue_seconds = drain(spec["n"])
            return {"seconds": state["last"] - t0, "enqueue_seconds": enqueue_seconds}
        samples = []
        for i in range(spec["samples"] + 2):
            time.sleep(IDLE)
            done.clear()
            t = time.perf_counter()
            queue.enqueue(probe, i)
            if not done.wait(timeout=60):
                raise TimeoutError("the probe did not start")
            if i >= 2:
                samples.append(state["starts"][i] - t)
        return summary_ms(samples)
    finally:
        DBOS.destroy()


def child_main(spec: dict[str, Any]) -> None:
    try:
        out = perdure_child(spec) if spec["system"] == "perdure" else dbos_child(spec)
        result = {**spec, "status": "ok", **out}
    except Exception as exc:  # reported in the table, not raised
        import traceback

        result = {**spec, "status": "error", "error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
    print(json.dumps(result), flush=True)


# -- driver -------------------------------------------------------------------------------------------------


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**spec, "status": "error", "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        return {**spec, "status": "error", "error": proc.stderr.strip()[-800:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def med_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def tables(runs: list[dict[str, Any]], sizes: list[int]) -> str:
    ok = [r for r in runs if r["status"] == "ok"]
    out: list[str] = []
    for backend in ("sqlite", "postgres"):
        mine = [r for r in ok if r["backend"] == backend]
        if not mine:
            continue
        title = "SQLite" if backend == "sqlite" else "PostgreSQL"
        out += [
            f"### {title}: drain N no-op workflows, queue concurrency {CONCURRENCY}",
            "",
            f"| N | system | median | min{DASH}max | runs | total s | enqueue s "
            "| vs DBOS 1 s poll | vs DBOS 0.1 s poll |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n in sizes:
            rate: dict[str, float] = {}
            for system in SYSTEMS:
                rs = [r for r in mine if r["kind"] == "drain" and r["n"] == n and r["system"] == system]
                if rs:
                    rate[system] = statistics.median(n / r["seconds"] for r in rs)
            for system, label in SYSTEMS.items():
                rs = [r for r in mine if r["kind"] == "drain" and r["n"] == n and r["system"] == system]
                if not rs:
                    continue
                m, lo, hi = med_range([n / r["seconds"] for r in rs])
                secs = statistics.median(r["seconds"] for r in rs)
                enq = statistics.median(r["enqueue_seconds"] for r in rs)
                ratios = [
                    f"{m / rate[ref]:.1f}{X}" if ref in rate and ref != system else "—"
                    for ref in ("dbos-1.0", "dbos-0.1")
                ]
                out.append(
                    f"| {n:,} | {label} | **{fmt(m)}** wf/s | {fmt(lo)}{DASH}{fmt(hi)} | {len(rs)} | {secs:.2f} "
                    f"| {enq:.2f} | {ratios[0]} | {ratios[1]} |"
                )
        out += [
            "",
            f"### {title}: idle queue, enqueue → start latency (ms)",
            "",
            f"| system | enqueued from | median | p99 | max | samples {X} runs |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for system, label in SYSTEMS.items():
            rs = [r for r in mine if r["kind"] == "latency" and r["system"] == system]
            if not rs:
                continue
            for prefix, where in (("", "the worker's process"), ("client_", "a Client (other connections)")):
                if f"{prefix}median_ms" not in rs[0]:
                    continue
                med = statistics.median(r[f"{prefix}median_ms"] for r in rs)
                p99 = statistics.median(r[f"{prefix}p99_ms"] for r in rs)
                mx = max(r[f"{prefix}max_ms"] for r in rs)
                count = rs[0][f"{prefix}samples"]
                out.append(f"| {label} | {where} | **{med:.2f}** | {p99:.2f} | {mx:.2f} | {count} {X} {len(rs)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="all", choices=["sqlite", "postgres", "all"])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="2000,5000", help="drain sizes (default 2000,5000)")
    ap.add_argument("--samples", type=int, default=200, help="latency samples for perdure (default 200)")
    ap.add_argument("--dbos-samples", type=int, default=30, help="latency samples for DBOS (it polls)")
    ap.add_argument("--enqueue", default="concurrent", choices=["concurrent", "sequential"])
    ap.add_argument("--quick", action="store_true", help="small sizes and samples: a smoke test")
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--tmpdir", default=None, help="where the SQLite files go (a real disk, not tmpfs)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.quick:
        args.sizes, args.samples, args.dbos_samples, args.reps = "300", 30, 5, 1
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]

    from _pgserver import PgServer

    pg: PgServer | None = None
    notes: list[str] = []
    if "postgres" in backends:
        if args.pg_url:
            pg = PgServer.from_url(args.pg_url)
        else:
            pg, why = PgServer.throwaway()
            if pg is None:
                notes.append(f"PostgreSQL skipped: {why}")
                backends.remove("postgres")
    jobs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for backend in backends:
            for system in systems:
                for n in sizes:
                    jobs.append(
                        {
                            "rep": rep,
                            "backend": backend,
                            "system": system,
                            "kind": "drain",
                            "n": n,
                            "enqueue": args.enqueue,
                        }
                    )
                samples = args.samples if system == "perdure" else args.dbos_samples
                jobs.append({"rep": rep, "backend": backend, "system": system, "kind": "latency", "samples": samples})
    started = dt.datetime.now()
    runs: list[dict[str, Any]] = []
    try:
        for k, spec in enumerate(jobs, 1):
            tmp = tempfile.mkdtemp(prefix="perdure-queues-", dir=args.tmpdir)
            dbname = None
            try:
                if spec["backend"] == "sqlite":
                    path = os.path.join(tmp, "bench.sqlite")
                    spec["url"] = f"sqlite:///{path}"
                    spec["dbos_url"] = f"sqlite:///{path}"
                else:
                    assert pg is not None
                    dbname, url = pg.create_database()
                    spec["url"] = spec["dbos_url"] = url
                what = f"N={spec['n']}" if spec["kind"] == "drain" else f"{spec['samples']} samples"
                print(
                    f"[{k}/{len(jobs)}] {spec['backend']} {spec['system']} {spec['kind']} {what} ...", file=sys.stderr
                )
                result = run_child(spec, timeout=1200)
                if result["status"] != "ok":
                    print(f"    error: {result.get('error')}\n{result.get('tb', '')}", file=sys.stderr)
                runs.append(result)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if dbname is not None and pg is not None:
                    pg.drop_database(dbname)
    finally:
        if pg is not None:
            pg.close()
    head = (
        f"## Queues: perdure vs DBOS — {started:%Y-%m-%d %H:%M}, {args.reps} rep(s), {args.enqueue} enqueues, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}\n"
    )
    text = head + "\n" + tables(runs, sizes)
    errors = [r for r in runs if r["status"] != "ok"]
    notes += [f"{r['backend']} {r['system']} {r['kind']}: {r.get('error')}" for r in errors]
    if notes:
        text += "\nNotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    out = HERE / "results" / f"queues-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), "args": vars(args), "runs": runs, "markdown": text}))
    print(f"raw results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
