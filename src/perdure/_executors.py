"""Who is alive: executor identity, heartbeats, and deciding which executors' work to take over.

An executor is one launched runtime. It registers a row with its host key (hostname + boot id + pid
namespace), pid and the pid's start time, and refreshes a heartbeat. Another executor is dead when:
- it has no row (it shut down, leaving PENDING work), or
- it runs on this same host and its pid is gone, a zombie, or now a different process: known at once, so a
  restarted process recovers its predecessor's work immediately, without waiting for a lease; or
- its heartbeat is older than the lease (any host: this also catches a hung or frozen process).

`PERDURE_HOST_ID` overrides the host part of the key, for setups where hostname, boot id and pid
namespace do not tell hosts apart.
"""

from __future__ import annotations

import os
import socket
import uuid
from functools import cache

from .store.base import ExecutorRecord, now_ms


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


@cache
def host_key() -> str:
    override = os.environ.get("PERDURE_HOST_ID")
    if override:
        return override
    boot = _read("/proc/sys/kernel/random/boot_id") or "noboot"
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = "nons"
    return f"{socket.gethostname()}/{boot}/{ns}"


def pid_started(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart; Linux only."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    # After the command name: state is field 3 overall, starttime is field 22.
    return fields[19] if len(fields) > 19 else None


def _pid_state(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0] if fields else None


def local_process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _pid_state(pid) in ("Z", "X"):
        return False
    return not (started is not None and pid_started(pid) not in (None, started))


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def this_executor(executor_id: str, app_version: str | None) -> ExecutorRecord:
    t = now_ms()
    pid = os.getpid()
    return ExecutorRecord(
        executor_id=executor_id,
        host_key=host_key(),
        hostname=socket.gethostname(),
        pid=pid,
        pid_started=pid_started(pid),
        app_version=app_version,
        started_at=t,
        heartbeat_at=t,
    )


def is_dead(record: ExecutorRecord, lease_ms: int, now: int | None = None) -> bool:
    if record.host_key == host_key() and not local_process_alive(record.pid, record.pid_started):
        return True
    return (now if now is not None else now_ms()) - record.heartbeat_at > lease_ms


def is_live_other(record: ExecutorRecord, lease_ms: int) -> bool:
    """A different live process holds this executor id."""
    if record.host_key == host_key() and record.pid == os.getpid():
        return False
    return not is_dead(record, lease_ms)
