"""Connections to Postgres: one engine per process, transactions owned by the caller."""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from worker.settings import DatabaseSettings


class Database:
    """A lazily created engine, safe to carry across ``fork()`` (Celery's prefork pool)."""

    def __init__(self, settings: DatabaseSettings, *,
                 before_commit: Callable[[Session], None] | None = None,
                 after_commit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._settings = settings
        self._before_commit = before_commit
        self._after_commit = after_commit
        self._engine: Engine | None = None
        self._pid = 0
        self._sessions: sessionmaker[Session] | None = None

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
            pool_timeout=10,
            pool_recycle=1800,
            connect_args={"connect_timeout": s.db_connect_timeout_s},
        )
        event.listen(self._engine, "checkout", _refuse_closed)
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
        recorded are still announced, after the statement."""
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            with Session(bind=connection, expire_on_commit=False) as session:
                yield session
                info = dict(session.info)
        finally:
            connection.close()
        if info and self._after_commit is not None:
            self._after_commit(info)

    def dispose(self) -> None:
        """Drop the pool; its connections are closed only if this process opened them."""
        if self._engine is not None:
            self._engine.dispose(close=self._pid == os.getpid())
        self._engine = None


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
