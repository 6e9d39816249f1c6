"""Connections to Postgres: one engine per process, transactions owned by the caller.

Every call has a deadline, ``AGENTQ_DEPENDENCY_TIMEOUT_S`` (``bounds``): connecting, and
each wait for the server (a statement, a fetch, a commit) on a ``BoundedConnection``, which
closes a connection the server has not answered in time (a link that hangs sends no reset:
without this a read waits for the OS's two-hour keepalive). The server cancels a statement
running a second short of it (``statement_timeout``), so a slow query fails cleanly and
keeps its connection; it ends a session idle in a transaction for longer (a client cut off
holding locks), and TCP keepalives notice a dead peer within about the same bound.
"""

from __future__ import annotations

import math
import os
import select
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from worker.base import breakers
from worker.base.settings import DatabaseSettings


class Database:
    """A lazily created engine, safe to carry across ``fork()`` (Celery's prefork pool)."""

    def __init__(self, settings: DatabaseSettings, *,
                 before_commit: Callable[[Session], None] | None = None,
                 after_commit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._settings = settings
        self._before_commit = before_commit
        self._after_commit = after_commit
        self._engine: Engine | None = None
        self._autocommit_engine: Engine | None = None
        self._pid = 0
        self._sessions: sessionmaker[Session] | None = None

    def on_commit(self, *, before: Callable[[Session], None],
                  after: Callable[[dict[str, Any]], None]) -> None:
        """Wire what a commit implies (``worker.runs.lifecycle``: a run's successors before
        it, its announcements and deliveries' dispatch after it); see ``transaction``."""
        self._before_commit, self._after_commit = before, after

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._open()
        assert self._engine is not None
        return self._engine

    def _open(self) -> None:
        if self._engine is not None:
            # Inherited from a parent process: forget its connections without closing
            # them, as SQLAlchemy's pooling guide says for multiprocessing.
            self._engine.dispose(close=False)
        s = self._settings
        self._engine = create_engine(
            s.database_url,
            pool_size=s.db_pool_size,
            max_overflow=s.db_pool_size,
            pool_timeout=s.dependency_timeout_s,
            pool_recycle=1800,
            connect_args=bounds(s),
            # Bound values hold secrets (signing secrets, tokens, inputs): never in an
            # error's message, so never in a log line or traceback.
            hide_parameters=True,
        )
        wait_s = s.dependency_timeout_s
        # A connect that timed out opens the server's breaker: the next connects fail at
        # once for the bound, so a link that hangs does not tie up every pool slot in a
        # connect, each request waiting for a slot and then for its own connect.
        breaker = breakers.of(s.database_url, reset_s=wait_s)

        @event.listens_for(self._engine, "do_connect")
        def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
            try:
                connection = breaker.call(lambda: BoundedConnection.connect(*cargs, **cparams),
                                          unreachable=(psycopg.errors.ConnectionTimeout,))
            except breakers.Unreachable as error:
                raise psycopg.errors.ConnectionTimeout(str(error)) from None
            connection.wait_timeout_s = wait_s
            return connection

        event.listen(self._engine, "checkout", _refuse_closed)
        # The same pool; each connection it lends is in autocommit until it comes back.
        self._autocommit_engine = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._pid = os.getpid()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session inside one transaction: committed on success, rolled back on error.

        ``before_commit`` may add to the transaction what its changes imply (the deliveries
        of a run that ended); ``after_commit`` gets ``session.info`` (the events recorded,
        the deliveries created) once the transaction has committed, never if it rolled back.
        """
        _ = self.engine
        assert self._sessions is not None
        with self._sessions() as session:
            with session.begin():
                yield session
                if self._before_commit is not None and session.info:
                    self._before_commit(session)
            info = dict(session.info)
            session.info.clear()
        if info and self._after_commit is not None:
            self._after_commit(info)

    @contextmanager
    def autocommit(self) -> Iterator[Session]:
        """Yield a session whose every statement commits by itself: no BEGIN or COMMIT
        round trips. For reads, and for writes that are one (atomic) statement; events
        recorded are still announced, after the statement. A connection is taken from the
        pool at the first statement: a session that needs none costs none."""
        _ = self.engine
        assert self._autocommit_engine is not None
        with Session(bind=self._autocommit_engine, expire_on_commit=False) as session:
            yield session
            info = dict(session.info)
        if info and self._after_commit is not None:
            self._after_commit(info)

    def one_row(self, sql: str, params: Mapping[str, Any]) -> Any:
        """Run one statement that commits by itself; return its first row (a named tuple).

        Straight on a pooled psycopg connection, for the one write of a submission: the
        SQLAlchemy Connection, Session and Result around a statement cost an API process
        about as much CPU as psycopg's own work. ``sql`` has psycopg's ``%(name)s``
        placeholders; errors are raised as SQLAlchemy's, as from any other statement.
        """
        try:
            pooled = self.engine.raw_connection()
            connection = pooled.driver_connection
            assert isinstance(connection, psycopg.Connection)
            try:
                connection.autocommit = True
                with connection.cursor(row_factory=namedtuple_row) as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchone()
            finally:
                if connection.broken or connection.closed:
                    pooled.invalidate()  # never lent again
                else:
                    connection.autocommit = False  # lent back as the pool lends it
                pooled.close()
        except psycopg.Error as error:  # as SQLAlchemy raises it from any other statement
            raise DBAPIError.instance(sql, params, error, psycopg.Error,
                                      hide_parameters=True) from error

    def dispose(self) -> None:
        """Drop the pool; its connections are closed only if this process opened them."""
        if self._engine is not None:
            self._engine.dispose(close=self._pid == os.getpid())
        self._engine = None


def bounds(settings: DatabaseSettings) -> dict[str, Any]:
    """libpq's connection parameters that bound connecting, statements, idle transactions
    and dead peers by ``AGENTQ_DEPENDENCY_TIMEOUT_S``."""
    bound = settings.dependency_timeout_s
    statement_ms = int(max(bound - 1, bound / 2) * 1000)
    given = make_url(settings.database_url).query.get("options")  # the URL's own, kept
    given = " ".join(given) if isinstance(given, tuple) else given
    return {
        "connect_timeout": max(1, math.ceil(min(settings.db_connect_timeout_s, bound))),
        "options": f"{given + ' ' if given else ''}-c statement_timeout={statement_ms} "
                   f"-c idle_in_transaction_session_timeout={int(bound * 6 * 1000)}",
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(bound)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": int(bound * 2 * 1000),
    }


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends within
    ``wait_timeout_s``: past it, the connection is closed (it is mid-protocol, so of no
    further use) and ``psycopg.OperationalError`` raised, which SQLAlchemy takes for a
    disconnect (the pool drops the connection)."""

    wait_timeout_s: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = timeout if timeout is not None else self.wait_timeout_s
        try:
            return super().wait(gen, interval, bound)
        except psycopg.OperationalError as error:
            if timeout is not None or type(error).__name__ != "_WaitTimeout":
                raise  # psycopg's own bounded waits (its cancel) handle theirs
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"Postgres did not answer within {bound:g} s (AGENTQ_DEPENDENCY_TIMEOUT_S); "
                "the connection is closed") from None


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Refuse a pooled connection the server has closed (a restart, say) before using it.

    An idle connection has nothing to read; if its socket is readable, the server hung up
    (or sent an error). Checking costs a poll of the socket, not a round trip as
    ``pool_pre_ping`` would, on every checkout. ``poll``, not ``select``: an API process
    holding a thousand streams has descriptors past select's limit of 1,024.
    """
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed this pooled connection")
