"""Private, throw-away database servers for the system tests: a test may stop, start,
restart and crash them (`kill -9`) without touching the shared servers other tests use.

- `PostgresServer`: `initdb` into a temporary directory (as the `postgres` user when run
  as root: initdb refuses root), `postgres` on a free port of 127.0.0.1, trust auth, its
  socket in the temporary directory, fsync off.
- `MariaDBServer`: `mariadb-install-db` into a temporary datadir, `mariadbd` on a free
  port with its own socket and pid file (`--user=root` when run as root), root without a
  password.
- `SqliteFile`: SQLite has no server. A file stands in for it so that callers treat the
  three alike; it cannot be stopped, restarted or crashed (`restartable` is False and
  those methods raise `NotApplicable`).

Each server has a `url` (SQLAlchemy URL of a database created at the first start) and
`new_database()` for a fresh one; `stop()` (clean shutdown), `start()` (returns once the
server accepts connections), `restart()`, `crash()` (SIGKILL of every server process; the
next `start()` recovers) and `close()` (kills it and removes every file). `open_server`
builds one by backend name, raising `ServerUnavailable` when it cannot run here.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

PG_BIN = Path(os.environ.get("QUEUETOPIA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
MARIADBD = Path(os.environ.get("QUEUETOPIA_TEST_MARIADBD", "/usr/sbin/mariadbd"))
MARIADB_INSTALL_DB = Path(
    os.environ.get("QUEUETOPIA_TEST_MARIADB_INSTALL_DB", "/usr/bin/mariadb-install-db")
)
#: How long `start()` waits for a server to accept connections.
START_TIMEOUT = 60.0
#: How long `stop()` waits for a clean shutdown before killing the server.
STOP_TIMEOUT = 60.0


class ServerUnavailable(RuntimeError):
    """A private server cannot run on this machine (binaries missing, start failed)."""


class NotApplicable(NotImplementedError):
    """The operation makes no sense for this backend (SQLite has no server to restart)."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """The pids of the direct children of `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class PrivateServer(ABC):
    """A database server of our own, in a temporary directory."""

    backend: str
    #: Whether stop, start, restart and crash apply.
    restartable = True

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"qt-{self.backend}-"))
        self.port = free_port()
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._databases: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def setup(self) -> None:
        """Create the data directory, start the server and create the `url` database;
        `ServerUnavailable` when any of it fails (everything is removed then)."""
        try:
            self._initialize()
            self.start()
            self.url = self.new_database()
        except BaseException:
            self.close()
            raise

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The main server process, while it runs."""
        return self.process.pid if self.running and self.process is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and return once it accepts connections."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._server_command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **self._run_as(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerUnavailable(
                    f"{self.backend} server exited with code {self.process.returncode}"
                    f" while starting; log tail:\n{_tail(self.log_path)}"
                )
            try:
                self._ping()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.crash()
                    raise ServerUnavailable(
                        f"{self.backend} server did not accept connections within {timeout} s"
                        f" ({exc.__class__.__name__}: {exc}); log tail:\n{_tail(self.log_path)}"
                    ) from None
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the server down cleanly (clients are disconnected) and wait for it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(self._stop_signal)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.crash()
            raise RuntimeError(
                f"{self.backend} server did not stop within {timeout} s; killed it"
            ) from None
        self._wait_children_gone(process.pid)

    def restart(self) -> None:
        """A clean stop, then a start."""
        self.stop()
        self.start()

    def crash(self) -> None:
        """SIGKILL every process of the server, as a power cut would; `start()` recovers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        # Freeze the main process so that it forks no more, kill its children, then it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGSTOP)
        children = _children(process.pid)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in children):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.backend} server processes {children} survived SIGKILL")
            time.sleep(0.01)

    def close(self) -> None:
        """Kill the server and remove its files."""
        with contextlib.suppress(Exception):
            self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    # -- databases -----------------------------------------------------------------------

    def admin_url(self) -> str:
        """A URL of the server's administration database."""
        return self._url_for(self._admin_database)

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"qt_{uuid.uuid4().hex[:16]}"
        self._admin(f"CREATE DATABASE {name}")
        self._databases.add(name)
        return self._url_for(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by `new_database` (its clients are disconnected)."""
        name = sa.make_url(url).database
        assert name in self._databases, f"not a database of this server: {url}"
        force = " WITH (FORCE)" if self.backend == "postgresql" else ""
        self._admin(f"DROP DATABASE IF EXISTS {name}{force}")
        self._databases.discard(name)

    def _admin(self, statement: str) -> None:
        engine = sa.create_engine(self.admin_url(), poolclass=NullPool)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(statement))
        finally:
            engine.dispose()

    def _ping(self) -> None:
        engine = sa.create_engine(
            self.admin_url(), poolclass=NullPool, connect_args={"connect_timeout": 2}
        )
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()

    def _wait_children_gone(self, pid: int, timeout: float = 30.0) -> None:
        """After the main process exited: wait until the processes it left are gone."""
        deadline = time.monotonic() + timeout
        while _children(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- per backend ---------------------------------------------------------------------

    _stop_signal = signal.SIGTERM
    _admin_database = ""

    @abstractmethod
    def _initialize(self) -> None:
        """Create the data directory."""

    @abstractmethod
    def _server_command(self) -> list[str]:
        """The command that runs the server in the foreground."""

    @abstractmethod
    def _url_for(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on this server."""

    def _run_as(self) -> dict[str, Any]:
        """Popen's `user`, `group` and `extra_groups` for the server processes (none: as
        ourselves)."""
        return {}


class PostgresServer(PrivateServer):
    """A PostgreSQL cluster of our own (`initdb` + `postgres`)."""

    backend = "postgresql"
    # Fast shutdown: disconnects clients (SIGTERM would wait for them to leave).
    _stop_signal = signal.SIGINT
    _admin_database = "postgres"

    def __init__(self) -> None:
        for binary in ("initdb", "postgres"):
            if not (PG_BIN / binary).is_file():
                raise ServerUnavailable(f"PostgreSQL binary {PG_BIN / binary} not found")
        super().__init__()
        self.data = self.root / "data"
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable("running as root and there is no postgres user") from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._user: dict[str, Any] = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": [],
            }
        else:
            self._user = {}

    def _run_as(self) -> dict[str, Any]:
        return self._user

    def _initialize(self) -> None:
        command = [
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, check=False, **self._user
        )
        if done.returncode != 0:
            raise ServerUnavailable(
                f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )

    def _server_command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            # Safe against a crash of the server's processes (what `crash()` does): the
            # WAL reaches the kernel at each commit (synchronous_commit stays on, or a
            # crash would lose commits); only a crash of the machine would lose data.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "32MB",
            "logging_collector": "off",
        }
        command = [str(PG_BIN / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


class MariaDBServer(PrivateServer):
    """A MariaDB server of our own (`mariadb-install-db` + `mariadbd`)."""

    backend = "mariadb"
    _admin_database = "mysql"

    def __init__(self) -> None:
        for binary in (MARIADBD, MARIADB_INSTALL_DB):
            if not binary.is_file():
                raise ServerUnavailable(f"MariaDB binary {binary} not found")
        super().__init__()
        self.data = self.root / "data"
        self._as_root = ["--user=root"] if os.geteuid() == 0 else []

    def _common_options(self) -> list[str]:
        return [
            f"--datadir={self.data}",
            *self._as_root,
            "--innodb-log-file-size=16M",
            "--innodb-buffer-pool-size=64M",
        ]

    def _initialize(self) -> None:
        command = [
            str(MARIADB_INSTALL_DB),
            "--no-defaults",
            *self._common_options(),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise ServerUnavailable(f"mariadb-install-db failed ({done.returncode}): {output}")

    def _server_command(self) -> list[str]:
        return [
            str(MARIADBD),
            "--no-defaults",
            *self._common_options(),
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--socket={self.root / 'mariadbd.sock'}",
            f"--pid-file={self.root / 'mariadbd.pid'}",
            f"--tmpdir={self.root}",
            "--skip-name-resolve",
            "--skip-log-bin",
            # The redo log reaches the kernel at each commit: a crash of mariadbd loses
            # no commit (0 would).
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--max-connections=500",
        ]

    def _url_for(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"


class SqliteFile(PrivateServer):
    """SQLite in a temporary directory. There is no server: `url` names a file that the
    first connection creates, and stop, start, restart and crash do not apply."""

    backend = "sqlite"
    restartable = False

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    def setup(self) -> None:
        self.url = self.new_database()

    @property
    def running(self) -> bool:
        return True

    def start(self, timeout: float = START_TIMEOUT) -> None:
        raise NotApplicable("SQLite has no server to start")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        raise NotApplicable("SQLite has no server to stop")

    def restart(self) -> None:
        raise NotApplicable("SQLite has no server to restart")

    def crash(self) -> None:
        raise NotApplicable("SQLite has no server to crash")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        name = f"qt_{uuid.uuid4().hex[:16]}"
        self._databases.add(name)
        return self._url_for(name)

    def drop_database(self, url: str) -> None:
        path = Path(sa.make_url(url).database or "")
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").unlink()

    def _initialize(self) -> None:
        pass

    def _server_command(self) -> list[str]:
        raise NotApplicable("SQLite has no server")

    def _url_for(self, database: str) -> str:
        return f"sqlite:///{self.root / database}.db"


SERVERS: dict[str, type[PrivateServer]] = {
    "postgresql": PostgresServer,
    "mariadb": MariaDBServer,
    "sqlite": SqliteFile,
}


def open_server(backend: str) -> PrivateServer:
    """A new private server of `backend`, started, with its `url` database created.

    Raises `ServerUnavailable` when it cannot run here (binaries missing, no start).
    """
    try:
        server = SERVERS[backend]()
    except KeyError:
        raise ValueError(f"unknown backend {backend!r} (one of {sorted(SERVERS)})") from None
    server.setup()
    return server


@dataclass
class PrivateDatabase:
    """A fresh database on a private server, for one test: `url` is the test's own
    database; stop, start, restart and crash act on the whole server."""

    server: PrivateServer
    url: str

    @property
    def backend(self) -> str:
        return self.server.backend

    @property
    def restartable(self) -> bool:
        return self.server.restartable

    @property
    def running(self) -> bool:
        return self.server.running

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def restart(self) -> None:
        self.server.restart()

    def crash(self) -> None:
        self.server.crash()


class ServerPool:
    """One private server per backend, started on first use and closed by `close()`.

    A server that cannot start is remembered as unavailable (with the reason) so that
    every test asking for it learns at once.
    """

    def __init__(self) -> None:
        self._servers: dict[str, PrivateServer] = {}
        self._unavailable: dict[str, str] = {}

    def server(self, backend: str) -> PrivateServer:
        """The backend's server, running (`ServerUnavailable` if it cannot be)."""
        if backend in self._unavailable:
            raise ServerUnavailable(self._unavailable[backend])
        server = self._servers.get(backend)
        if server is None:
            try:
                server = self._servers[backend] = open_server(backend)
            except ServerUnavailable as exc:
                self._unavailable[backend] = str(exc)
                raise
        elif not server.running:
            server.start()  # left stopped or crashed by the previous test
        return server

    def database(self, backend: str) -> PrivateDatabase:
        """A fresh database on the backend's server."""
        server = self.server(backend)
        return PrivateDatabase(server, server.new_database())

    def release(self, database: PrivateDatabase) -> None:
        """Drop the database (restarting its server if the test left it down); a server
        that cannot be brought back is closed and replaced on next use."""
        server = database.server
        try:
            if not server.running:
                server.start()
            server.drop_database(database.url)
        except Exception:
            server.close()
            if self._servers.get(server.backend) is server:
                del self._servers[server.backend]
            raise

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
