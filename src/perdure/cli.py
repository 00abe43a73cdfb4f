"""The `perdure` command: migrate the system database, inspect and steer workflows, run the crash demo.

Every command reads the database URL from `--database-url` (on the group or on the command), else
`$PERDURE_DATABASE_URL`, else `sqlite:///perdure.sqlite`. Listing and show commands take `--json` for scripts.
Errors print one line, `error: ...`, on stderr and exit with status 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .client import Client
from .errors import ConfigurationError, PerdureError, WorkflowNotFound
from .messaging import SLEEP_STEP
from .runtime import DEFAULT_DATABASE_URL
from .store.base import RESUMABLE_STATUSES, WorkflowStatus
from .workflows import StepInfo, WorkflowInfo

T = TypeVar("T")

STATUS_STYLES = {
    "PENDING": "yellow",
    "ENQUEUED": "cyan",
    "DELAYED": "cyan",
    "SUCCESS": "green",
    "ERROR": "red",
    "CANCELLED": "magenta",
    "RETRIES_EXCEEDED": "bold red",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


# -- errors ------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class PerdureGroup(click.Group):
    """The root group: every expected failure becomes one `error: ...` line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (PerdureError, ValueError, OSError, sqlite3.Error) as exc:
            _fail(_one_line(exc))
        except Exception as exc:
            if os.environ.get("PERDURE_DEBUG"):
                raise
            _fail(f"{type(exc).__name__}: {_one_line(exc)} (set PERDURE_DEBUG=1 for the traceback)")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(1)


# -- plumbing ----------------------------------------------------------------------------------------------


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True  # piped output: lines are not wrapped...
        if "COLUMNS" not in os.environ:
            console.width = 200  # ...and tables do not cut ids to fit 80 columns
    return console


def display_url(url: str) -> str:
    """The URL with any password hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _database_url(ctx: click.Context, override: str | None) -> str:
    if override:
        return override
    root = ctx.find_root()
    url = root.obj.get("database_url") if isinstance(root.obj, dict) else None
    return str(url or os.environ.get("PERDURE_DATABASE_URL") or DEFAULT_DATABASE_URL)


def _check_exists(url: str) -> None:
    """Refuse to create a new SQLite file for a command that only reads or steers existing workflows."""
    if url.split(":", 1)[0].lower() != "sqlite":
        return
    from .store.sqlite import parse_sqlite_url

    path, _ = parse_sqlite_url(url)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) and not os.path.exists(path):
        raise ConfigurationError(
            f"no database at {path!r}; check --database-url / $PERDURE_DATABASE_URL, "
            "or create it with `perdure migrate`"
        )


def _with_client(url: str, action: Callable[[Client], Coroutine[Any, Any, T]], *, create: bool = False) -> T:
    if not create:
        _check_exists(url)

    async def go() -> T:
        async with Client(url) as client:
            return await action(client)

    return asyncio.run(go())


def database_url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database-url",
        "database_url",
        default=None,
        metavar="URL",
        help="System database (default: the group's --database-url, $PERDURE_DATABASE_URL, "
        f"else {DEFAULT_DATABASE_URL}).",
    )(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def _parse_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Seconds, or a number with a unit: 90, 90s, 15m, 12h, 7d, 2w."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration (examples: 3600, 90s, 15m, 12h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


# -- JSON and display ----------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _parse_stored(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def workflow_json(info: WorkflowInfo) -> dict[str, Any]:
    out = {f.name: _json_value(getattr(info, f.name)) for f in dataclasses.fields(info)}
    out["inputs"] = _parse_stored(info.inputs)
    out["output"] = _parse_stored(info.output)
    return out


def step_json(info: StepInfo) -> dict[str, Any]:
    out = {f.name: _json_value(getattr(info, f.name)) for f in dataclasses.fields(info)}
    out["output"] = _parse_stored(info.output)
    return out


def _dump_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _status(status: str) -> str:
    style = STATUS_STYLES.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def _short(text: str | None, width: int = 60) -> str:
    if text is None:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- the group -------------------------------------------------------------------------------------------


@click.group(cls=PerdureGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="PERDURE_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    metavar="URL",
    help="System database: sqlite:///path/file.sqlite or postgresql://... (env: PERDURE_DATABASE_URL).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what perdure and the database driver do, on stderr.")
@click.version_option(package_name="perdure", prog_name="perdure")
@click.pass_context
def main(ctx: click.Context, database_url: str, verbose: bool) -> None:
    """perdure: durable execution for Python. Inspect and steer workflows stored in the system database."""
    ctx.obj = {"database_url": database_url}
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    elif not root.handlers:
        # Driver warnings (a connection retry, say) would spill multi-line text around the one-line error.
        root.addHandler(logging.NullHandler())


@main.command(short_help="Create or upgrade the database schema.")
@database_url_option
@click.pass_context
def migrate(ctx: click.Context, database_url: str | None) -> None:
    """Create the system database schema, or upgrade it to this perdure's version."""
    url = _database_url(ctx, database_url)

    async def go(client: Client) -> int:
        return await client.store.schema_version()

    version = _with_client(url, go, create=True)
    click.echo(f"schema version {version} at {display_url(url)}")


@main.command(short_help="Watch a durable AI agent survive kill -9 of its process (offline, ~2 s).")
@click.option(
    "--database-url",
    "database_url",
    default=None,
    metavar="URL",
    help="Database for the demo (default: a fresh temporary SQLite file).",
)
@click.option("--keep", is_flag=True, help="Keep the demo's folder (database and side-effect log) and print its path.")
@click.option(
    "--model",
    default=None,
    metavar="MODEL",
    help="A pydantic-ai model string, e.g. openai:gpt-5 (needs its package and API key). "
    "Default: a scripted offline model.",
)
def demo(database_url: str | None, keep: bool, model: str | None) -> None:
    """Run the geography agent in a child process, SIGKILL it after the tool call, restart it and watch it resume.

    The model turn and the tool call made before the crash are replayed from their checkpoints, not repeated.
    """
    from .demo import run_demo

    run_demo(database_url=database_url, keep=keep, model=model, console=_console())


# -- workflows ---------------------------------------------------------------------------------------------


@main.group()
def workflows() -> None:
    """List, inspect, cancel, resume, fork and delete workflows."""


@workflows.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in WorkflowStatus], case_sensitive=False),
    help="Only workflows with this status (repeatable).",
)
@click.option("--name", default=None, help="Only workflows of this registered name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0), help="At most this many (0: all).")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0), help="Skip this many first.")
@click.option("--oldest", is_flag=True, help="Oldest first (default: newest first).")
@json_option
@database_url_option
@click.pass_context
def list_workflows(
    ctx: click.Context,
    statuses: Sequence[str],
    name: str | None,
    limit: int,
    offset: int,
    oldest: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """List workflows, newest first."""
    url = _database_url(ctx, database_url)

    async def go(client: Client) -> list[WorkflowInfo]:
        return await client.list_workflows(
            status=[s.upper() for s in statuses] or None,
            name=name,
            limit=limit or None,
            offset=offset,
            order="oldest" if oldest else "newest",
        )

    infos = _with_client(url, go)
    if as_json:
        _dump_json([workflow_json(i) for i in infos])
        return
    console = _console()
    if not infos:
        console.print("no workflows")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "STATUS", "CREATED", "DURATION", "RECOVERED"):
        table.add_column(column, no_wrap=column != "NAME")
    for info in infos:
        table.add_row(
            escape(info.workflow_id),
            escape(info.name),
            _status(info.status.value),
            _when(info.created_at),
            _duration(info.started_at or info.created_at, info.completed_at),
            str(info.recovery_attempts) if info.recovery_attempts else "",
        )
    console.print(table)
    if limit and len(infos) == limit:
        console.print(f"[dim]first {limit} shown; use --limit/--offset for more[/]")


@workflows.command("show")
@click.argument("workflow_id")
@json_option
@database_url_option
@click.pass_context
def show_workflow(ctx: click.Context, workflow_id: str, as_json: bool, database_url: str | None) -> None:
    """Show one workflow: status, times, inputs, output or error."""
    url = _database_url(ctx, database_url)

    async def go(client: Client) -> WorkflowInfo:
        return await client.get_workflow(workflow_id)

    info = _with_client(url, go)
    if as_json:
        _dump_json(workflow_json(info))
        return
    rows: list[tuple[str, str | None]] = [
        ("id", escape(info.workflow_id)),
        ("name", escape(info.name)),
        ("status", _status(info.status.value)),
        ("created", _when(info.created_at)),
        ("updated", _when(info.updated_at)),
        ("completed", _when(info.completed_at) if info.completed_at else None),
        ("duration", _duration(info.started_at or info.created_at, info.completed_at) if info.completed_at else None),
        ("executor", escape(info.executor_id) if info.executor_id else None),
        ("app version", escape(info.app_version) if info.app_version else None),
        ("queue", escape(info.queue_name) if info.queue_name else None),
        ("parent", escape(info.parent_id) if info.parent_id else None),
        ("forked from", escape(info.forked_from) if info.forked_from else None),
        ("recoveries", str(info.recovery_attempts) if info.recovery_attempts else None),
        ("deadline", _when(info.deadline_at) if info.deadline_at else None),
        ("inputs", escape(info.inputs) if info.inputs is not None else None),
        ("output", escape(info.output) if info.output is not None else None),
        ("error", f"[red]{escape(info.error)}[/]" if info.error else None),
    ]
    console = _console()
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        if value is not None:
            console.print(f"[bold]{key:<{width}}[/]  {value}")
    if info.error_traceback:
        console.print("[bold]traceback[/]")
        console.print(escape(info.error_traceback.rstrip()), soft_wrap=True)


@workflows.command("steps")
@click.argument("workflow_id")
@json_option
@database_url_option
@click.pass_context
def list_steps(ctx: click.Context, workflow_id: str, as_json: bool, database_url: str | None) -> None:
    """List the checkpointed steps of a workflow, in order."""
    url = _database_url(ctx, database_url)

    async def go(client: Client) -> list[StepInfo]:
        return await client.list_steps(workflow_id)

    steps = _with_client(url, go)
    if as_json:
        _dump_json([step_json(s) for s in steps])
        return
    console = _console()
    if not steps:
        console.print(f"workflow {escape(workflow_id)!r} has no checkpointed steps")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("#", "NAME", "STATUS", "ATTEMPTS", "DURATION", "OUTPUT / ERROR"):
        table.add_column(column, justify="right" if column in ("#", "ATTEMPTS") else "left")
    for s in steps:
        if s.error:
            outcome = f"[red]{escape(_short(s.error))}[/]"
        elif s.child_id:
            outcome = f"child {escape(s.child_id)}"
        elif s.name == SLEEP_STEP and s.output and s.output.isdigit():
            outcome = f"wakes at {_when(datetime.fromtimestamp(int(s.output) / 1000, tz=UTC))}"
        else:
            outcome = escape(_short(s.output))
        table.add_row(
            str(s.step_id),
            escape(s.name),
            _status(s.status),
            str(s.attempts),
            _duration(s.started_at, s.completed_at),
            outcome,
        )
    console.print(table)


@workflows.command("cancel")
@click.argument("workflow_id")
@database_url_option
@click.pass_context
def cancel_workflow(ctx: click.Context, workflow_id: str, database_url: str | None) -> None:
    """Cancel a workflow (and its children). A running one stops at its next durable operation."""
    url = _database_url(ctx, database_url)

    async def go(client: Client) -> WorkflowInfo:
        await client.cancel(workflow_id)
        return await client.get_workflow(workflow_id)

    info = _with_client(url, go)
    if info.status != WorkflowStatus.CANCELLED:
        _fail(f"workflow {workflow_id!r} already finished ({info.status.value}); not cancelled")
    click.echo(f"cancelled workflow {workflow_id!r}")


@workflows.command("resume")
@click.argument("workflow_id")
@database_url_option
@click.pass_context
def resume_workflow(ctx: click.Context, workflow_id: str, database_url: str | None) -> None:
    """Resume a CANCELLED, ERROR or RETRIES_EXCEEDED workflow from its last completed step.

    The workflow is queued; a launched runtime that has its code runs it.
    """
    url = _database_url(ctx, database_url)

    async def go(client: Client) -> WorkflowInfo:
        # The status before: once queued, a runtime may take it (PENDING) before we could look again.
        before = await client.get_workflow(workflow_id)
        await client.resume(workflow_id)
        return before

    info = _with_client(url, go)
    if info.status.value in RESUMABLE_STATUSES:
        click.echo(f"resumed workflow {workflow_id!r}: queued for a runtime that has its code")
    else:
        click.echo(f"workflow {workflow_id!r} is already {info.status.value}")


@workflows.command("fork")
@click.argument("workflow_id")
@click.option(
    "--from-step",
    "from_step",
    required=True,
    type=click.IntRange(min=0),
    help="Reuse the checkpoints of steps before this position; run from here.",
)
@click.option("--new-id", "new_id", default=None, help="Id of the new workflow (default: generated).")
@database_url_option
@click.pass_context
def fork_workflow(
    ctx: click.Context, workflow_id: str, from_step: int, new_id: str | None, database_url: str | None
) -> None:
    """Start a new workflow from an existing one's inputs and its checkpoints before --from-step."""
    url = _database_url(ctx, database_url)
    if new_id is not None and not new_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--new-id")

    async def go(client: Client) -> str:
        await client.get_workflow(workflow_id)  # WorkflowNotFound for an unknown source
        if new_id is not None:
            try:
                await client.get_workflow(new_id)
            except WorkflowNotFound:
                pass
            else:
                raise ValueError(f"a workflow with id {new_id!r} already exists")
        handle = await client.fork(workflow_id, from_step, new_workflow_id=new_id)
        return handle.workflow_id

    forked = _with_client(url, go)
    click.echo(f"forked workflow {workflow_id!r} at step {from_step} as {forked!r}: queued for a runtime")


@workflows.command("delete")
@click.argument("workflow_ids", nargs=-1)
@click.option(
    "--older-than",
    "older_than",
    default=None,
    callback=_parse_duration,
    metavar="DURATION",
    help="Instead of ids: delete every finished workflow completed longer ago than this (seconds, or 15m, 12h, 7d).",
)
@database_url_option
@click.pass_context
def delete_workflows(
    ctx: click.Context, workflow_ids: tuple[str, ...], older_than: float | None, database_url: str | None
) -> None:
    """Delete finished workflows (with their steps). PENDING and queued ones are never deleted."""
    if workflow_ids and older_than is not None:
        raise click.UsageError("give workflow ids or --older-than, not both")
    if not workflow_ids and older_than is None:
        raise click.UsageError("give the ids of the workflows to delete, or --older-than")
    url = _database_url(ctx, database_url)
    if older_than is not None:
        cutoff = older_than

        async def collect(client: Client) -> int:
            return await client.garbage_collect(cutoff)

        count = _with_client(url, collect)
        click.echo(f"deleted {count} finished workflow(s) completed more than {cutoff:g} s ago")
        return

    ids = list(dict.fromkeys(workflow_ids))

    async def go(client: Client) -> tuple[int, dict[str, str]]:
        before = {i.workflow_id: i.status.value for i in await client.list_workflows(workflow_ids=ids, limit=None)}
        deleted = await client.delete_workflows(ids)
        after = {i.workflow_id: i.status.value for i in await client.list_workflows(workflow_ids=ids, limit=None)}
        left = {wid: after[wid] for wid in ids if wid in after}
        left.update({wid: "missing" for wid in ids if wid not in before})
        return deleted, left

    deleted, left = _with_client(url, go)
    click.echo(f"deleted {deleted} workflow(s)")
    if left:
        for wid, why in left.items():
            reason = "no such workflow" if why == "missing" else f"it is {why}; only finished workflows are deleted"
            click.echo(f"error: not deleted {wid!r}: {reason}", err=True)
        raise click.exceptions.Exit(1)


if __name__ == "__main__":  # pragma: no cover - `python -m perdure.cli`
    main()
