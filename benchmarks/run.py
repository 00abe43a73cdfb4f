"""perdure vs DBOS, side by side, each measurement in a fresh process on a fresh database.

    .venv/bin/python benchmarks/run.py [--reps 5] [--backend sqlite|postgres|all] [--only a,b,c,d,e]
                                       [--quick] [--pg-url URL] [--systems dbos,perdure,floor,plain]

Prints a markdown table (medians, min-max, speed relative to DBOS, cost in bare commits) and writes
every raw measurement to benchmarks/results/<timestamp>.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _pgserver import PgServer  # noqa: E402

SCENARIOS = {
    "a": "sequential workflows, 0 steps",
    "b": "1 workflow x N no-op steps",
    "c": "32 concurrent workflows x M no-op steps",
    "d": "bare one-row INSERT + COMMIT (floor)",
    "e": "agent runs: plain pydantic-ai vs perdure vs DBOS (seed agent; 3 tool turns)",
}
# A scenario that runs as several kinds of job (one table row each). Every other scenario is one job.
SUBSCENARIOS = {"e": ("e.geo", "e.trip")}
AGENT_TITLE = {"e.geo": "seed (TestModel)", "e.trip": "3 tool turns"}


def job_scenarios(scenario: str) -> tuple[str, ...]:
    return SUBSCENARIOS.get(scenario, (scenario,))


# Per-scenario parameters. "full" keeps a 5-rep SQLite run at about 5 minutes on 2 cores.
PARAMS = {
    "full": {
        "a": {"duration": 2.0, "warmup": 10},
        "b": {"steps": 1000, "warmup": 10},
        "c": {"workflows": 32, "steps": 100, "warmup": 10},
        "d": {"duration": 1.0, "warmup": 50},
        "e.geo": {"agent": "geo", "duration": 1.5, "warmup": 20},
        "e.trip": {"agent": "trip", "duration": 1.5, "warmup": 10},
    },
    "quick": {
        "a": {"duration": 0.5, "warmup": 3},
        "b": {"steps": 200, "warmup": 5},
        "c": {"workflows": 32, "steps": 20, "warmup": 5},
        "d": {"duration": 0.3, "warmup": 20},
        "e.geo": {"agent": "geo", "duration": 0.3, "warmup": 3},
        "e.trip": {"agent": "trip", "duration": 0.3, "warmup": 3},
    },
}


@dataclass(frozen=True)
class Config:
    backend: str  # sqlite | postgres
    system: str  # dbos | perdure | floor | plain
    variant: str  # dbos: sync/async; perdure: synchronous=; floor: mode; e: agent/capability[-synchronous]
    label: str
    floor: str | None = None  # variant of the floor config this one is compared with
    only: str | None = None  # the scenarios it runs, when not the system's default
    skip_jobs: tuple[str, ...] = ()  # job scenarios (SUBSCENARIOS) it does not run

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.system}/{self.variant}"

    @property
    def scenarios(self) -> str:
        if self.only is not None:
            return self.only
        return "d" if self.system == "floor" else "abc"


CONFIGS = [
    Config("sqlite", "dbos", "sync", "DBOS sync (default file: journal=delete, FULL)", "delete-full"),
    Config("sqlite", "dbos", "async", "DBOS async (default file: journal=delete, FULL)", "delete-full"),
    Config("sqlite", "perdure", "FULL", "perdure async, synchronous=FULL (default)", "wal-full"),
    Config("sqlite", "perdure", "NORMAL", "perdure async, synchronous=NORMAL", "wal-normal"),
    Config("sqlite", "floor", "wal-normal", "sqlite3 WAL + NORMAL, BEGIN IMMEDIATE"),
    Config("sqlite", "floor", "wal-full", "sqlite3 WAL + FULL, BEGIN IMMEDIATE"),
    Config("sqlite", "floor", "delete-full", "sqlite3 journal=delete + FULL, BEGIN IMMEDIATE (DBOS's mode)"),
    Config("postgres", "dbos", "sync", "DBOS sync", "txn"),
    Config("postgres", "dbos", "async", "DBOS async", "txn"),
    Config("postgres", "perdure", "default", "perdure async", "txn"),
    Config("postgres", "floor", "txn", "psycopg BEGIN + INSERT + COMMIT"),
    Config("postgres", "floor", "autocommit", "psycopg autocommit INSERT (1 round trip)"),
    # e: agents. "plain" touches no database; it runs in each backend's group so it interleaves there.
    Config("sqlite", "plain", "plain", "pydantic-ai `agent.run()`, no durability", only="e"),
    Config("sqlite", "perdure", "agent-FULL", "perdure `DurableAgent.run()`, FULL (default)", only="e"),
    Config("sqlite", "perdure", "capability-FULL", "perdure `PerdureDurability` in a workflow, FULL", only="e"),
    Config("sqlite", "perdure", "agent-NORMAL", "perdure `DurableAgent.run()`, NORMAL", only="e"),
    Config("sqlite", "perdure", "capability-NORMAL", "perdure `PerdureDurability` in a workflow, NORMAL", only="e"),
    Config(
        "sqlite",
        "perdure",
        "agent-inline-FULL",
        'perdure `DurableAgent.run()`, FULL, tools `{"perdure": False}` (unchecked, as in DBOS)',
        only="e",
        skip_jobs=("e.geo",),  # the seed agent has no tools
    ),
    Config("sqlite", "dbos", "agent", "DBOS `DBOSAgent.run()` (default file)", only="e"),
    Config("sqlite", "dbos", "capability", "DBOS `DBOSDurability` in a workflow (default file)", only="e"),
    Config("postgres", "plain", "plain", "pydantic-ai `agent.run()`, no durability", only="e"),
    Config("postgres", "perdure", "agent", "perdure `DurableAgent.run()`", only="e"),
    Config("postgres", "perdure", "capability", "perdure `PerdureDurability` in a workflow", only="e"),
    Config(
        "postgres",
        "perdure",
        "agent-inline",
        'perdure `DurableAgent.run()`, tools `{"perdure": False}` (unchecked, as in DBOS)',
        only="e",
        skip_jobs=("e.geo",),
    ),
    Config("postgres", "dbos", "agent", "DBOS `DBOSAgent.run()`", only="e"),
    Config("postgres", "dbos", "capability", "DBOS `DBOSDurability` in a workflow", only="e"),
]
FLOOR_SHORT = {
    "wal-normal": "WAL/NORMAL",
    "wal-full": "WAL/FULL",
    "delete-full": "delete/FULL",
    "txn": "BEGIN+INSERT+COMMIT",
    "autocommit": "autocommit INSERT",
}
BACKEND_TITLE = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
X = "\u00d7"  # multiplication sign
DASH = "\u2013"  # en dash, for ranges


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Running children
# ------------------------------------------------------------------------------------------------


def parse_child_output(stdout: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The child's result line(s): the first "ok" result wins; later lines are teardown problems."""
    lines: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "status" in obj and "scenario" in obj:
                lines.append(obj)
    if not lines:
        return None, []
    ok = [x for x in lines if x["status"] == "ok"]
    if ok:
        return ok[0], [x for x in lines if x is not ok[0]]
    return lines[-1], lines[:-1]


def run_child(spec: dict[str, Any], cwd: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "child.py"), json.dumps(spec)]
    t0 = time.perf_counter()
    timed_out = False
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:  # subprocess.run has already killed the child
        timed_out = True
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = None
    wall = time.perf_counter() - t0
    result, others = parse_child_output(stdout)
    if result is None:
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {rc}, no result line"
        result = {**spec, "status": "error", "reason": why}
    result["child_wall_s"] = wall
    result["child_rc"] = rc
    if others:
        result["teardown"] = [o.get("reason", o.get("status")) for o in others]
    if timed_out and result["status"] == "ok":
        result["teardown"] = [
            *result.get("teardown", []),
            f"child killed after {timeout:.0f} s (hung on exit)",
        ]
    if result["status"] != "ok" or rc not in (0, None) or others:
        result["stderr_tail"] = stderr[-3000:]
    return result


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------


def display_value(scenario: str, r: dict[str, Any]) -> float:
    """The figure shown for a scenario: b in µs per step, e in median µs per run, everything else as a rate."""
    if scenario.startswith("e."):
        return float(r["us_run_median"])
    return float(r["us_per_op"]) if scenario == "b" else float(r["rate"])


UNITS = {"a": "wf/s", "b": "µs/step", "c": "steps/s", "d": "commits/s", "e.geo": "µs/run", "e.trip": "µs/run"}


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.1f}{X}" if x >= 10 else f"{x:.2f}{X}"


@dataclass
class Row:
    backend: str
    scenario: str
    config: str
    label: str
    system: str
    variant: str
    runs: int
    median: float
    lo: float
    hi: float
    unit: str
    us_per_op_median: float
    cpu_us_per_op_median: float
    vs_dbos_async: float | None = None
    vs_dbos_async_range: tuple[float, float] | None = None
    vs_dbos_sync: float | None = None
    vs_dbos_sync_range: tuple[float, float] | None = None
    floor_variant: str | None = None
    floor_multiple: float | None = None


def summarize(runs: list[dict[str, Any]], configs: list[Config]) -> list[Row]:
    ok: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r["status"] == "ok":
            ok.setdefault((r["config_key"], r["scenario"]), []).append(r)

    def med_us(key: str, scenario: str) -> float | None:
        rs = ok.get((key, scenario))
        return statistics.median(r["us_per_op"] for r in rs) if rs else None

    def by_rep(key: str, scenario: str) -> dict[int, float]:
        return {r["rep"]: r["us_per_op"] for r in ok.get((key, scenario), [])}

    rows: list[Row] = []
    for scenario in "abcd":
        for c in configs:
            rs = ok.get((c.key, scenario))
            if not rs:
                continue
            vals = [display_value(scenario, r) for r in rs]
            us = statistics.median(r["us_per_op"] for r in rs)
            row = Row(
                backend=c.backend,
                scenario=scenario,
                config=c.key,
                label=c.label,
                system=c.system,
                variant=c.variant,
                runs=len(rs),
                median=statistics.median(vals),
                lo=min(vals),
                hi=max(vals),
                unit=UNITS[scenario],
                us_per_op_median=us,
                cpu_us_per_op_median=statistics.median(r["cpu_us_per_op"] for r in rs),
            )
            if c.system != "floor":
                mine = by_rep(c.key, scenario)
                for ref in ("async", "sync"):
                    ref_key = f"{c.backend}/dbos/{ref}"
                    ref_us = med_us(ref_key, scenario)
                    if ref_us is None:
                        continue
                    theirs = by_rep(ref_key, scenario)
                    per_rep = [theirs[k] / mine[k] for k in mine if k in theirs]
                    rng = (min(per_rep), max(per_rep)) if per_rep else None
                    setattr(row, f"vs_dbos_{ref}", ref_us / us)
                    setattr(row, f"vs_dbos_{ref}_range", rng)
                if c.floor:
                    floor_us = med_us(f"{c.backend}/floor/{c.floor}", "d")
                    if floor_us is not None:
                        row.floor_variant = c.floor
                        row.floor_multiple = us / floor_us
            rows.append(row)
    return rows


def markdown(rows: list[Row], params: dict[str, Any], backends: list[str]) -> str:
    out: list[str] = []
    pa, pb, pc = params["a"], params["b"], params["c"]
    names = {
        "a": f"a: sequential empty workflows (≥{pa['duration']:g} s)",
        "b": f"b: 1 workflow {X} {pb['steps']:,} no-op steps",
        "c": f"c: {pc['workflows']} concurrent workflows {X} {pc['steps']} steps",
        "d": "d: one-row INSERT + COMMIT",
    }

    def ratio_cell(v: float | None, rng: tuple[float, float] | None) -> str:
        if v is None:
            return "—"
        s = fmt_ratio(v)
        if rng is not None and (rng[1] - rng[0]) > 0.005:
            s += f" ({rng[0]:.2f}{DASH}{rng[1]:.2f})"
        return s

    for backend in backends:
        brows = [r for r in rows if r.backend == backend]
        if not brows:
            continue
        out.append(f"### {BACKEND_TITLE[backend]}")
        out.append("")
        main = [r for r in brows if r.scenario != "d"]
        if main:
            out.append(
                f"| scenario | system / config | median | min{DASH}max | runs | µs/op | CPU µs/op "
                "| vs DBOS async | vs DBOS sync | ÷ one commit |"
            )
            out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
            for r in main:
                floor = (
                    f"{fmt(r.floor_multiple)} ({FLOOR_SHORT[r.floor_variant]})"
                    if r.floor_multiple is not None and r.floor_variant
                    else "—"
                )
                out.append(
                    f"| {names[r.scenario]} | {r.label} | **{fmt(r.median)}** {r.unit} "
                    f"| {fmt(r.lo)}{DASH}{fmt(r.hi)} | {r.runs} | {fmt(r.us_per_op_median)} "
                    f"| {fmt(r.cpu_us_per_op_median)} "
                    f"| {ratio_cell(r.vs_dbos_async, r.vs_dbos_async_range)} "
                    f"| {ratio_cell(r.vs_dbos_sync, r.vs_dbos_sync_range)} | {floor} |"
                )
            out.append("")
        floors = [r for r in brows if r.scenario == "d"]
        if floors:
            out.append(f"| floor (d) | median | min{DASH}max | runs | µs per commit | CPU µs/commit |")
            out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
            for r in floors:
                out.append(
                    f"| {r.label} | **{fmt(r.median)}** commits/s | {fmt(r.lo)}{DASH}{fmt(r.hi)} | {r.runs} "
                    f"| **{fmt(r.us_per_op_median)}** | {fmt(r.cpu_us_per_op_median)} |"
                )
            out.append("")
    out.append(
        "Medians of fresh-process runs. `vs DBOS` = DBOS's median time per op ÷ this row's (>1: faster "
        "than DBOS), in brackets the same ratio within each repetition (min-max). `÷ one commit` = "
        "time per op ÷ the median bare commit in the matching mode. µs/op and CPU µs/op are per "
        "workflow (a), per step (b, c) or per commit (d); CPU is the whole client process."
    )
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Agents (e): time per run, and the overhead over plain pydantic-ai measured in the same repetition
# ------------------------------------------------------------------------------------------------

DBOS_AGENT_REFS = {"agent": "DBOSAgent", "capability": "DBOSDurability"}


@dataclass
class AgentRow:
    backend: str
    scenario: str
    config: str
    label: str
    system: str
    variant: str
    runs: int
    us_median: float  # median over the reps of each child's median µs per run
    us_lo: float
    us_hi: float
    us_mean_median: float  # median over the reps of each child's mean µs per run (total ÷ runs)
    cpu_us_median: float  # the same as us_median, for the process CPU time of one run
    steps_per_run: int | None
    overhead_us: float | None = None  # median(this) - median(plain)
    overhead_range: tuple[float, float] | None = None  # per repetition: this - plain
    cpu_overhead_us: float | None = None
    vs_plain: float | None = None  # median(this) / median(plain)
    # this row's overhead / DBOS's overhead, for each DBOS API; ranges per repetition
    overhead_vs_dbos_agent: float | None = None
    overhead_vs_dbos_agent_range: tuple[float, float] | None = None
    overhead_vs_dbos_capability: float | None = None
    overhead_vs_dbos_capability_range: tuple[float, float] | None = None


def summarize_agents(runs: list[dict[str, Any]], configs: list[Config]) -> list[AgentRow]:
    ok: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r["status"] == "ok" and str(r["scenario"]).startswith("e."):
            ok.setdefault((r["config_key"], r["scenario"]), []).append(r)

    def med(key: str, scenario: str, field: str = "us_run_median") -> float | None:
        rs = ok.get((key, scenario))
        return statistics.median(float(r[field]) for r in rs) if rs else None

    def by_rep(key: str, scenario: str) -> dict[int, float]:
        return {r["rep"]: float(r["us_run_median"]) for r in ok.get((key, scenario), [])}

    rows: list[AgentRow] = []
    for scenario in SUBSCENARIOS["e"]:
        for c in configs:
            rs = ok.get((c.key, scenario))
            if not rs or "e" not in c.scenarios:
                continue
            vals = [float(r["us_run_median"]) for r in rs]
            steps = sorted({int(r["steps_per_run"]) for r in rs if r.get("steps_per_run") is not None})
            row = AgentRow(
                backend=c.backend,
                scenario=scenario,
                config=c.key,
                label=c.label,
                system=c.system,
                variant=c.variant,
                runs=len(rs),
                us_median=statistics.median(vals),
                us_lo=min(vals),
                us_hi=max(vals),
                us_mean_median=statistics.median(float(r["us_per_op"]) for r in rs),
                cpu_us_median=statistics.median(float(r["cpu_us_run_median"]) for r in rs),
                steps_per_run=steps[-1] if steps else None,
            )
            plain_key = f"{c.backend}/plain/plain"
            plain = med(plain_key, scenario)
            if plain is not None and c.system != "plain":
                row.overhead_us = row.us_median - plain
                row.cpu_overhead_us = row.cpu_us_median - (med(plain_key, scenario, "cpu_us_run_median") or 0.0)
                row.vs_plain = row.us_median / plain
                mine, plain_reps = by_rep(c.key, scenario), by_rep(plain_key, scenario)
                over = {k: mine[k] - plain_reps[k] for k in mine if k in plain_reps}
                if over:
                    row.overhead_range = (min(over.values()), max(over.values()))
                for api in DBOS_AGENT_REFS:
                    ref_key = f"{c.backend}/dbos/{api}"
                    ref = med(ref_key, scenario)
                    if ref is None or ref - plain <= 0:
                        continue
                    theirs = by_rep(ref_key, scenario)
                    per_rep = [
                        over[k] / (theirs[k] - plain_reps[k])
                        for k in over
                        if k in theirs and theirs[k] - plain_reps[k] > 0
                    ]
                    setattr(row, f"overhead_vs_dbos_{api}", row.overhead_us / (ref - plain))
                    setattr(row, f"overhead_vs_dbos_{api}_range", (min(per_rep), max(per_rep)) if per_rep else None)
            rows.append(row)
    return rows


def markdown_agents(rows: list[AgentRow], params: dict[str, Any], backends: list[str]) -> str:
    out: list[str] = []

    def us(x: float | None, sign: bool = False) -> str:
        return "—" if x is None else (f"{x:+,.0f}" if sign else f"{x:,.0f}")

    def rng(r: tuple[float, float] | None, digits: int = 0) -> str:
        return "" if r is None else f" ({r[0]:,.{digits}f}{DASH}{r[1]:,.{digits}f})"

    def ratio(v: float | None, r: tuple[float, float] | None) -> str:
        if v is None:
            return "—"
        cell = f"{v:.2f}"
        return f"**{cell}**{rng(r, 2)}" if 0 <= v <= 1 / 3 else f"{cell}{rng(r, 2)}"

    for backend in backends:
        brows = [r for r in rows if r.backend == backend]
        if not brows:
            continue
        out.append(f"### e: agents, {BACKEND_TITLE[backend]}")
        out.append("")
        out.append(
            f"| agent | system / API | µs/run | min{DASH}max | mean µs/run | runs | steps/run | CPU µs/run "
            f"| overhead µs (per rep) | CPU overhead µs | {X} plain "
            "| overhead ÷ DBOSAgent's | overhead ÷ DBOSDurability's |"
        )
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in brows:
            over = "—" if r.overhead_us is None else f"**{us(r.overhead_us, True)}**{rng(r.overhead_range)}"
            out.append(
                f"| {AGENT_TITLE[r.scenario]} | {r.label} | **{us(r.us_median)}** "
                f"| {us(r.us_lo)}{DASH}{us(r.us_hi)} | {us(r.us_mean_median)} | {r.runs} "
                f"| {'—' if r.steps_per_run is None else r.steps_per_run} | {us(r.cpu_us_median)} "
                f"| {over} | {us(r.cpu_overhead_us, True)} "
                f"| {'—' if r.vs_plain is None else fmt_ratio(r.vs_plain)} "
                f"| {ratio(r.overhead_vs_dbos_agent, r.overhead_vs_dbos_agent_range)} "
                f"| {ratio(r.overhead_vs_dbos_capability, r.overhead_vs_dbos_capability_range)} |"
            )
        out.append("")
    if out:
        geo, trip = params["e.geo"], params["e.trip"]
        out.append(
            f"Agents: `seed (TestModel)` = the seed's geography agent on `TestModel`, 1 model request; "
            f"`3 tool turns` = a `FunctionModel` that calls one tool per turn three times, then answers "
            f"(4 model requests, 3 tool calls). Each child runs one agent sequentially for ≥{geo['duration']:g} s "
            f"/ ≥{trip['duration']:g} s after {geo['warmup']} / {trip['warmup']} warm-up runs. `µs/run` = the "
            "median over the reps of each child's median run time (`mean µs/run`: total ÷ runs, which "
            "includes the slow tail); CPU likewise, for the whole client process. `overhead` = µs/run "
            "- plain pydantic-ai's on the same backend; in brackets the same difference within each "
            "repetition (min-max). `overhead ÷ DBOS…'s` = this row's overhead ÷ that DBOS API's overhead, "
            "in brackets within each repetition; bold where it meets the target (≤ 0.33). `steps/run` = "
            "the steps one run records."
        )
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Metadata
# ------------------------------------------------------------------------------------------------


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_meta() -> dict[str, Any]:
    import sqlite3

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "sqlite": sqlite3.sqlite_version,
        "dbos": pkg_version("dbos"),
        "sqlalchemy": pkg_version("sqlalchemy"),
        "psycopg": pkg_version("psycopg"),
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_src": bool(git("status", "--porcelain", "--", "src")),
    }


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of every measurement (default 5)")
    ap.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="sqlite")
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated scenarios (default a,b,c,d; e: agents)")
    ap.add_argument("--systems", default="dbos,perdure,floor,plain", help="comma-separated (default all)")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a measurement")
    ap.add_argument("--pg-url", help="PostgreSQL server to create one database per child on")
    ap.add_argument("--tmpdir", help="where the fresh SQLite files go (default: the system temp dir)")
    ap.add_argument("--timeout", type=float, help="seconds before a child is killed (default 240/90)")
    ap.add_argument("--out", help="results file (default benchmarks/results/<timestamp>.json)")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; choose from {','.join(SCENARIOS)}")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.reps < 1:
        ap.error("--reps must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    params = PARAMS[mode]
    timeout = args.timeout or (90.0 if args.quick else 240.0)
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    notes: list[str] = []
    meta = machine_meta()
    started = dt.datetime.now()

    pg: PgServer | None = None
    if "postgres" in backends:
        if args.pg_url:
            pg = PgServer.from_url(args.pg_url)
        else:
            pg, why = PgServer.throwaway()
            if pg is None:
                notes.append(f"PostgreSQL skipped: {why}")
        if pg is not None:
            try:
                meta["postgres"] = pg.server_info()
            except Exception as e:
                notes.append(f"PostgreSQL skipped: cannot reach server ({type(e).__name__}: {e})")
                pg.close()
                pg = None
        if pg is None:
            backends = [b for b in backends if b != "postgres"]

    configs = [
        c for c in CONFIGS if c.backend in backends and c.system in args.systems and set(c.scenarios) & set(args.only)
    ]
    # one list per (backend, scenario) group, rotated each rep so no config always runs first
    jobs_per_rep: list[tuple[str, list[Config]]] = []
    for b in backends:
        for s in args.only:
            group = [c for c in configs if c.backend == b and s in c.scenarios]
            if group:
                for job in job_scenarios(s):
                    jobs_per_rep.append((job, [c for c in group if job not in c.skip_jobs]))
    total = args.reps * sum(len(g) for _, g in jobs_per_rep)
    log(
        f"perdure benchmarks: {mode} mode, {args.reps} rep(s), backends {', '.join(backends) or 'none'}, "
        f"scenarios {','.join(args.only)}, {total} child runs"
    )

    runs: list[dict[str, Any]] = []
    not_ready: dict[tuple[str, str], str] = {}  # (config key, scenario) -> why it was skipped
    done = 0
    interrupted = False
    try:
        for rep in range(args.reps):
            for s, group in jobs_per_rep:
                k = rep % len(group)
                for c in group[k:] + group[:k]:
                    done += 1
                    spec = {
                        "backend": c.backend,
                        "system": c.system,
                        "variant": c.variant,
                        "scenario": s,
                        "params": params[s],
                    }
                    base = {
                        "rep": rep,
                        "config_key": c.key,
                        "label": c.label,
                        "seq": done,
                        "loadavg_before": os.getloadavg()[0],
                    }
                    if (c.key, s) in not_ready:
                        runs.append({**spec, **base, "status": "skipped", "reason": not_ready[(c.key, s)]})
                        continue
                    tmp = tempfile.mkdtemp(prefix="perdure-bench-", dir=args.tmpdir)
                    dbname = None
                    try:
                        if c.system == "plain":
                            pass  # no database
                        elif c.backend == "sqlite":
                            spec["db"] = os.path.join(tmp, f"{c.system}.sqlite")
                        else:
                            assert pg is not None
                            dbname, spec["db"] = pg.create_database()
                        result = run_child(spec, cwd=tmp, timeout=timeout)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                        if dbname is not None and pg is not None:
                            pg.drop_database(dbname)
                    result.update(base)
                    runs.append(result)
                    prefix = f"[{done}/{total}] rep {rep + 1} {s} {c.backend} {c.system} {c.variant}:"
                    if result["status"] == "ok":
                        v = display_value(s, result)
                        extra = f" (teardown: {result['teardown']})" if result.get("teardown") else ""
                        log(f"{prefix} {fmt(v)} {UNITS[s]}, {result['child_wall_s']:.1f} s{extra}")
                    elif result["status"] == "skipped":
                        not_ready[(c.key, s)] = result["reason"]
                        log(f"{prefix} skipped: {result['reason']}")
                    else:
                        log(f"{prefix} ERROR: {result['reason']}")
                        tail = (result.get("traceback") or result.get("stderr_tail") or "").strip()
                        if tail:
                            log("    " + "\n    ".join(tail.splitlines()[-6:]))
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: partial results")
    finally:
        if pg is not None:
            pg.close()

    # notes: one per (config, status, reason), listing the scenarios (and reps, for errors) it hit
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for r in runs:
        if r["status"] in ("skipped", "error"):
            where = r["scenario"] if r["status"] == "skipped" else f"{r['scenario']}/rep {r['rep'] + 1}"
            key = (r["config_key"], r["label"], r["status"], r["reason"])
            if where not in grouped.setdefault(key, []):
                grouped[key].append(where)
        if r.get("teardown"):
            notes.append(f"{r['config_key']} scenario {r['scenario']} rep {r['rep'] + 1}: teardown: {r['teardown']}")
    for (cfg_key, label, status, reason), where in grouped.items():
        notes.append(f"{cfg_key} ({label}): {status} in {', '.join(where)}: {reason}")

    rows = summarize(runs, configs)
    agent_rows = summarize_agents(runs, configs)
    tables = [markdown(rows, params, backends) if rows else "", markdown_agents(agent_rows, params, backends)]
    table = "\n\n".join(t for t in tables if t)
    finished = dt.datetime.now()
    meta["loadavg_end"] = os.getloadavg()
    header = (
        f"## perdure vs DBOS — {started:%Y-%m-%d %H:%M}, {mode} mode, {args.reps} rep(s)\n\n"
        f"Python {meta['python']}, SQLite {meta['sqlite']}, dbos {meta['dbos']}, "
        f"{meta['cpus']} CPUs, load {meta['loadavg_start'][0]:.2f} → {meta['loadavg_end'][0]:.2f}, "
        f"perdure @ {meta['git_head']}{' (src modified)' if meta['git_dirty_src'] else ''}"
        + (f", PostgreSQL {meta['postgres']['server_version']}" if "postgres" in meta else "")
        + f"; {(finished - started).total_seconds():.0f} s.\n"
    )
    text = header + "\n" + table
    if notes:
        text += "\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes)
    print(text)

    out = Path(args.out) if args.out else HERE / "results" / f"{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "mode": mode,
        "args": {k: v for k, v in vars(args).items() if k != "pg_url"} | {"pg_url_given": bool(args.pg_url)},
        "params": params,
        "meta": meta,
        "configs": [asdict(c) for c in configs],
        "runs": runs,
        "summary": [asdict(r) for r in rows],
        "agent_summary": [asdict(r) for r in agent_rows],
        "notes": notes,
        "markdown": text,
    }
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    log(f"raw results: {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
