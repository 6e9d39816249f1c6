"""What a credential holds open: SSE streams and WebSockets, ended when it stops being valid.

A request is authenticated once, but a stream or a socket lives on for up to
``AGENTQ_STREAM_MAX_S``. Each one holds a ``Grant`` for as long as it is open, and the grant
ends (and wakes the stream, or closes the socket) when:

- its API key is revoked: at once in the process that revoked it, within milliseconds in
  every other (the revocation is announced over Redis, ``worker.keys.KeyCache``), and
  within ``RECHECK_S`` if the announcement is lost (one query per process for every key
  with something open);
- its JWT's ``exp`` passes;
- its life is over (``AGENTQ_STREAM_MAX_S``): clients reconnect and resume.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import text

from worker.access.keys import Principal
from worker.base.db import Database
from worker.base.runtime import Runtime

log = logging.getLogger(__name__)

RECHECK_S = 5.0
REVOKED, EXPIRED, LIFE_OVER = "revoked", "expired", "life_over"
_REASONS = {REVOKED: "the credential was revoked", EXPIRED: "the credential expired",
            LIFE_OVER: "the stream reached its longest life (AGENTQ_STREAM_MAX_S); resume"}


class Grant:
    """One open stream's or socket's hold on its credential."""

    def __init__(self, caller: Principal, *, max_s: float) -> None:
        self.caller = caller
        deadline = time.monotonic() + max_s
        self.ends_by = LIFE_OVER
        if caller.expires_at is not None:
            expires = time.monotonic() + (caller.expires_at - time.time())
            if expires < deadline:
                deadline, self.ends_by = expires, EXPIRED
        self.deadline = deadline
        self.reason: str | None = None
        self._ended = threading.Event()
        self._callbacks: list[Callable[[str], None]] = []
        self._lock = threading.Lock()

    @property
    def ended(self) -> bool:
        if not self._ended.is_set() and time.monotonic() >= self.deadline:
            self.end(self.ends_by)
        return self._ended.is_set()

    @property
    def why(self) -> str:
        """What ended the grant, as a sentence for the client."""
        return self.describe(self.reason or "")

    @staticmethod
    def describe(reason: str) -> str:
        return _REASONS.get(reason, reason)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def on_end(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` when the grant ends (at once if it has); returns a
        function that takes the callback back. The callback runs on the thread that ends
        the grant (a revocation's listener): it must not block."""
        with self._lock:
            ended = self._ended.is_set()
            if not ended:
                self._callbacks.append(callback)
        if ended:
            callback(self.reason or self.ends_by)

        def cancel() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return cancel

    def end(self, reason: str) -> None:
        with self._lock:
            if self._ended.is_set():
                return
            self.reason = reason
            self._ended.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:  # one stream's broken socket must not keep others open
                log.exception("ending a stream failed", extra={"reason": reason})


class Grants:
    """This process's open grants, by credential; checks them every ``RECHECK_S``."""

    @classmethod
    def of(cls, rt: Runtime) -> Grants:
        """This process's grants."""
        return rt.own("grants", lambda: cls(rt.db))

    def __init__(self, db: Database) -> None:
        self.pid = os.getpid()
        self._db = db
        self._by_key: dict[str, set[Grant]] = {}
        self._lock = threading.Lock()
        self._recheck = threading.Event()
        threading.Thread(target=self._watch, name="agentq-grants", daemon=True).start()

    @contextmanager
    def hold(self, caller: Principal, *, max_s: float) -> Iterator[Grant]:
        """A grant for a stream or socket that ``caller`` opens, for as long as it is open."""
        grant = Grant(caller, max_s=max_s)
        with self._lock:
            self._by_key.setdefault(caller.key_id, set()).add(grant)
        try:
            yield grant
        finally:
            with self._lock:
                held = self._by_key.get(caller.key_id)
                if held is not None:
                    held.discard(grant)
                    if not held:
                        del self._by_key[caller.key_id]

    def revoked(self, key_id: str | None) -> None:
        """A key was revoked: end what it holds (None: some key, unknown, so ask Postgres)."""
        if key_id is None:
            self._recheck.set()
            return
        for grant in self._of(key_id):
            grant.end(REVOKED)

    def _of(self, key_id: str) -> list[Grant]:
        with self._lock:
            return list(self._by_key.get(key_id, ()))

    def _watch(self) -> None:
        while True:
            self._recheck.wait(RECHECK_S)
            self._recheck.clear()
            try:
                self._check()
            except Exception as error:  # Postgres away: the next round asks again
                log.warning("open streams' keys not checked",
                            extra={"error": f"{type(error).__name__}"})

    def _check(self) -> None:
        with self._lock:
            grants = [grant for held in self._by_key.values() for grant in held]
        for grant in grants:
            _ = grant.ended  # ends those past their deadline
        key_ids = sorted({g.caller.key_id for g in grants if g.caller.is_api_key})
        if not key_ids:
            return
        with self._db.autocommit() as session:
            live = set(session.scalars(_LIVE, {"ids": key_ids}))
        for key_id in set(key_ids) - live:
            for grant in self._of(key_id):
                grant.end(REVOKED)


_LIVE = text("SELECT id FROM api_keys WHERE id = ANY(:ids) AND revoked_at IS NULL")
