"""A throwaway real PostgreSQL server for the test session (a pytest plugin).

The server binaries are found on PATH (``pg_ctl``), else in Debian's
``/usr/lib/postgresql/<version>/bin`` (newest first), else in ``$PG_BIN``. The first test that
needs PostgreSQL starts one: ``initdb`` in a temporary folder (as user ``nobody`` when the
suite runs as root: PostgreSQL refuses to run as root), ``pg_ctl start`` on 127.0.0.1 at a free
port, durability off (a test server: ``fsync=off``). A template database is migrated once;
every test gets its own database copied from it (``CREATE DATABASE … TEMPLATE``), dropped
after the test. The server stops at the end of the session.

Without the binaries the PostgreSQL tests are skipped, with one line saying how to enable
them; in CI (``CI=true``) they fail instead, so CI can never pass without having run them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

ENABLE = "install PostgreSQL's server binaries to run them (Debian: apt-get install postgresql)"
TEMPLATE = "ledger_template"
_skipped: list[str] = []


def find_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, if any."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(debian.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
        candidates += [v / "bin" for v in reversed(versions)]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to the end on a loop of its own, in a thread (any test's loop is
    left alone)."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One server in a temporary folder. ``start()``, ``url(database)``, ``stop()``."""

    def __init__(self, binaries: Path, *, durable: bool = False) -> None:
        self.binaries = binaries
        self.durable = durable  # the benchmark measures with fsync on
        self.root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: list[str] = []
        self._names = itertools.count(1)

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as, *command], check=True, capture_output=True, timeout=120)  # noqa: S603

    def start(self) -> None:
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as nobody
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = ["runuser", "-u", "nobody", "--"]
        bin_ = self.binaries
        self._run(str(bin_ / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = [
            "-c listen_addresses=127.0.0.1", f"-p {self.port}",
            f"-c unix_socket_directories={self.root}", "-c max_connections=200",
        ]  # fmt: skip
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(str(bin_ / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "-o", " ".join(options), "start")  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def _admin(self, *statements: str) -> None:
        connection = await asyncpg.connect(self.url())
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    def create_template(self) -> None:
        """The template every test database is copied from: created and migrated once."""
        from bot.ledger.postgres import PostgresDatabase

        async def migrate() -> None:
            await self._admin(f"CREATE DATABASE {TEMPLATE}")
            database = await PostgresDatabase.open(self.url(TEMPLATE))
            await database.close()

        run_async(migrate())

    def create_database(self, *, empty: bool = False) -> str:
        """A new database (migrated, unless ``empty``), its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        template = "template0" if empty else TEMPLATE
        run_async(self._admin(f"CREATE DATABASE {name} TEMPLATE {template}"))
        return name

    def drop_database(self, name: str) -> None:
        run_async(self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _unavailable() -> None:
    """No server binaries: fail in CI, else skip (the summary says once how to enable)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no PostgreSQL server binaries were found: {ENABLE}")
    _skipped.append(ENABLE)
    pytest.skip(f"no PostgreSQL server binaries: {ENABLE}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    binaries = find_binaries()
    if binaries is None:
        _unavailable()
        raise AssertionError("unreachable")
    server = PostgresServer(binaries)
    try:
        server.start()
        server.create_template()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A migrated database of this test's own, as a DATABASE_URL (with a password, which the
    server's trust authentication ignores: it must never be shown anywhere)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name).replace("postgres@", "postgres:TEST-SECRET-pg-password-5e1@")
    postgres_server.drop_database(name)


@pytest.fixture
def empty_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database (no tables): what ``migrate --to`` writes into."""
    name = postgres_server.create_database(empty=True)
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"PostgreSQL tests were skipped: {ENABLE}", yellow=True
        )
