"""Throwaway PostgreSQL 15 servers for the test suite and the benchmarks.

Stdlib only (psycopg is used for the readiness check when it is importable,
otherwise ``pg_isready``). Typical use::

    from pgcluster import PgCluster, available

    if (reason := available()) is not None:
        ...  # skip (or fail on CI)
    with PgCluster(extra_conf={"fsync": "off"}) as pg:
        url = pg.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1
        ...
        pg.restart()                       # pg_ctl restart -m fast, waits for readiness
    # server stopped, temp dir (data dir, log, socket) removed

Each cluster gets a fresh ``mkdtemp`` directory holding the data directory, the
server log and the unix socket, listens on 127.0.0.1 on a free port (never the
system server's 5432), uses trust auth and ``max_connections = 200``. Durable
defaults (fsync, synchronous_commit, full_page_writes) are kept unless
``extra_conf`` overrides them. ``initdb`` itself runs with ``--no-sync`` (the
initial files are not flushed to disk; that only matters for an OS crash, which
no test simulates).

Running as root: PostgreSQL refuses to run as root, so initdb/pg_ctl run as the
``postgres`` OS user through ``runuser -u postgres --`` (``setpriv`` as a
fallback). The temp dir is chowned to postgres; every parent directory of it must
be traversable (o+x) by postgres -- the default ``/tmp`` is; a ``TMPDIR`` or
``base_dir`` under ``/root`` (mode 700) is not and is rejected with a clear error.
When not root, the binaries run directly as the current user.

The binaries are looked up in ``$PERDURE_PG_BIN`` or ``/usr/lib/postgresql/15/bin``.

Servers still running when the process exits (normally, through Ctrl-C, or
through SIGTERM when no other SIGTERM handler is installed) are stopped by an
atexit hook. Only the process that started a cluster ever stops it, so forked
children exiting do not take the parent's server down. SIGKILL of the test
process cannot be handled; the orphan server then keeps running until killed.

From the benchmarks (``tests/`` is not a package), import it by path::

    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pgcluster import PgCluster, available

(``benchmarks/pg.py`` does exactly that and re-exports both names.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["PG_BIN", "PgCluster", "available"]

PG_BIN = Path(os.environ.get("PERDURE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"
SUPERUSER = "postgres"
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
# Settings this module manages itself; extra_conf must not override them.
_MANAGED = frozenset({"port", "listen_addresses", "unix_socket_directories"})


def _is_root() -> bool:
    return os.geteuid() == 0


def _run_as_prefix() -> list[str] | None:
    """Command prefix that runs a program as the postgres OS user (when root)."""
    if not _is_root():
        return []
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        return None
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", PG_OS_USER, "--"]
    if setpriv := shutil.which("setpriv"):
        return [setpriv, f"--reuid={PG_OS_USER}", f"--regid={PG_OS_USER}", "--init-groups", "--"]
    return None


def available() -> str | None:
    """None if a throwaway server can be started here, else the reason why not."""
    for name in _REQUIRED_BINARIES:
        path = PG_BIN / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"PostgreSQL binary not found: {path} (set PERDURE_PG_BIN or install postgresql-15)"
    if _is_root():
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root but there is no {PG_OS_USER!r} OS user to run PostgreSQL as"
        if _run_as_prefix() is None:
            return "running as root but neither runuser nor setpriv is available"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphaned postmaster may linger as a zombie if PID 1 does not reap.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """Raise if the postgres OS user cannot reach ``path`` (every parent needs x)."""
    for parent in path.parents:
        st = parent.stat()
        mode = st.st_mode
        if st.st_uid == uid:
            ok = bool(mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(mode & stat.S_IXGRP)
        else:
            ok = bool(mode & stat.S_IXOTH)
        if not ok:
            raise RuntimeError(
                f"{parent} is not traversable by the {PG_OS_USER!r} OS user "
                f"(mode {stat.filemode(mode)}); put the cluster somewhere else "
                f"(base_dir=... or TMPDIR, e.g. /tmp)"
            )


class PgCluster:
    """A throwaway PostgreSQL server in a fresh temp directory.

    ``start()`` runs initdb + ``pg_ctl start`` and waits until the server accepts
    TCP connections; ``stop()`` (idempotent) stops it and removes the temp dir.
    """

    def __init__(
        self,
        extra_conf: dict[str, str] | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        extra = dict(extra_conf or {})
        bad = _MANAGED.intersection(k.lower() for k in extra)
        if bad:
            raise ValueError(f"extra_conf may not set {sorted(bad)}; PgCluster manages them")
        self.extra_conf = extra
        self.base_dir = None if base_dir is None else Path(base_dir)
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._tmp: Path | None = None
        self._owner_pid: int | None = None
        self._prefix: list[str] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ paths / urls

    @property
    def tmp_dir(self) -> Path:
        """The temp dir (holds ``data/``, ``server.log`` and the unix socket)."""
        if self._tmp is None:
            raise RuntimeError("PgCluster is not started")
        return self._tmp

    @property
    def data_dir(self) -> Path:
        return self.tmp_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.tmp_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._tmp is not None

    @property
    def url(self) -> str:
        """URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        if self.port is None:
            raise RuntimeError("PgCluster is not started")
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    @property
    def pid(self) -> int | None:
        """PID of the postmaster (from postmaster.pid), or None if not running."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError, RuntimeError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PgCluster:
        with self._lock:
            if self._tmp is not None:
                return self
            reason = available()
            if reason is not None:
                raise RuntimeError(f"cannot start PostgreSQL: {reason}")
            prefix = _run_as_prefix()
            assert prefix is not None
            self._prefix = prefix
            parent = self.base_dir or Path(tempfile.gettempdir())
            tmp = Path(tempfile.mkdtemp(prefix="perdure-pg-", dir=parent)).resolve()
            self._tmp = tmp
            self._owner_pid = os.getpid()
            _LIVE.add(self)
            _install_signal_handler()
            try:
                if _is_root():
                    pw = pwd.getpwnam(PG_OS_USER)
                    _check_traversable(tmp, pw.pw_uid, pw.pw_gid)
                    os.chown(tmp, pw.pw_uid, pw.pw_gid)
                self._initdb()
                for attempt in range(3):
                    self.port = _free_port()
                    self._write_conf()
                    try:
                        self._pg_ctl("start", "-w", "-t", str(int(self.start_timeout)))
                        break
                    except RuntimeError:
                        # Lost the race for the free port to someone else: try another.
                        if attempt < 2 and "already in use" in self.log_tail(10):
                            continue
                        raise
                self._wait_ready()
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server and delete its temp dir. Idempotent.

        ``mode`` is passed to ``pg_ctl stop -m`` (immediate by default: the data
        is thrown away anyway).
        """
        with self._lock:
            tmp = self._tmp
            if tmp is None or self._owner_pid != os.getpid():
                return
            try:
                if self.pid is not None:
                    with contextlib.suppress(Exception):
                        self._pg_ctl("stop", "-m", mode, "-w", "-t", "30", timeout=40)
                self._kill_leftover()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                self._tmp = None
                self.port = None
                _LIVE.discard(self)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``, then wait until it accepts connections again.

        Also works after the postmaster was killed (pg_ctl then just starts it).
        """
        with self._lock:
            if self._tmp is None:
                raise RuntimeError("PgCluster is not started")
            self._pg_ctl("restart", "-m", mode, "-w", "-t", str(int(self.start_timeout)))
            self._wait_ready()

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self.port} dir={self._tmp}" if self._tmp else "stopped"
        return f"<PgCluster {state}>"

    # ------------------------------------------------------------------ databases

    def _connect_admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (random name if None) and return its URL."""
        from psycopg import sql

        name = name or f"db_{uuid.uuid4().hex[:12]}"
        with self._connect_admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions; no error if it does not exist."""
        from psycopg import sql

        with self._connect_admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # ------------------------------------------------------------------ internals

    def _env(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, PGHOST, ...) of the caller must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LC_MESSAGES", "C")
        return env

    def _run(self, args: list[str], what: str, timeout: float = 60.0) -> str:
        # Output goes to a file, not a pipe: the postmaster forked by pg_ctl could
        # otherwise inherit the pipe and make us wait for EOF forever.
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.run(
                    [*self._prefix, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.tmp_dir,  # postgres may not be allowed into our cwd
                    env=self._env(),
                    timeout=timeout,
                    check=False,
                )
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {timeout}s"
            out.seek(0)
            output = out.read().decode(errors="replace")
        if rc != 0:
            raise RuntimeError(
                f"{what} failed ({rc}): {' '.join(args)}\n{output.strip()}\n"
                f"--- server log tail ({self.log_file if self._tmp else '-'}) ---\n{self.log_tail()}"
            )
        return output

    def _initdb(self) -> None:
        self._run(
            [
                str(PG_BIN / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )  # fmt: skip

    def _pg_ctl(self, action: str, *args: str, timeout: float | None = None) -> str:
        return self._run(
            [str(PG_BIN / "pg_ctl"), action, "-D", str(self.data_dir), "-l", str(self.log_file), *args],
            f"pg_ctl {action}",
            timeout=timeout if timeout is not None else self.start_timeout + 15,
        )

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text)
        if _is_root():
            pw = pwd.getpwnam(PG_OS_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _write_conf(self) -> None:
        settings: dict[str, str] = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.tmp_dir),
            "max_connections": "200",
            "logging_collector": "off",
            **self.extra_conf,
        }
        body = "".join(f"{k} = {_quote(v)}\n" for k, v in settings.items())
        self._write_file(self.data_dir / "perdure.conf", "# written by tests/pgcluster.py\n" + body)
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include 'perdure.conf'" not in text:
            with main.open("a") as f:
                f.write("\ninclude 'perdure.conf'\n")
        self._write_file(
            self.data_dir / "pg_hba.conf",
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "local replication all trust\n"
            "host replication all 127.0.0.1/32 trust\n",
        )

    def _probe(self) -> bool:
        try:
            import psycopg
        except ImportError:
            rc = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                 "-U", SUPERUSER, "-d", "postgres", "-t", "2"],
                env=self._env(), check=False,
            ).returncode  # fmt: skip
            return rc == 0
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while True:
            if self._probe():
                return
            pid = self.pid
            if pid is None or not _pid_alive(pid):
                why = "the server is not running"
            elif time.monotonic() > deadline:
                why = f"not accepting connections after {self.start_timeout:.0f}s"
            else:
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            raise RuntimeError(
                f"PostgreSQL at {self.url} did not become ready: {why}\n"
                f"--- server log tail ({self.log_file}) ---\n{self.log_tail()}"
            )

    def _kill_leftover(self) -> None:
        """If pg_ctl stop did not do it, take the postmaster down by signal."""
        pid = self.pid
        if pid is None:
            return
        for sig, wait in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            if not _pid_alive(pid):
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end and _pid_alive(pid):
                time.sleep(0.05)


# ---------------------------------------------------------------------- process exit

_LIVE: set[PgCluster] = set()
_handler_installed = False


def _stop_all() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()


atexit.register(_stop_all)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all()  # only clusters started by this very process (pid check in stop)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_signal_handler() -> None:
    """Stop servers on SIGTERM too, unless someone else already handles SIGTERM."""
    global _handler_installed
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return
    _handler_installed = True
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
