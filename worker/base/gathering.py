"""Ids gathered from any thread and handled a set at a time by a thread of their own."""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)


class Gatherer:
    """Collects ids (``add``) and hands them to ``handle`` in sets: once ``every_s`` after
    the first of a set arrived, from a daemon thread of its own, one set at a time, so many
    callers cost one statement instead of one each. ``handle`` never raises: what it could
    not do it logs, and leaves to the sweeper or adds again."""

    every_s = 0.05
    thread_name = "agentq-gatherer"

    def __init__(self) -> None:
        self.pid = os.getpid()  # Runtime.own makes a new one in a forked child
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name=self.thread_name, daemon=True).start()

    def add(self, *ids: str) -> None:
        with self._lock:
            self._pending.update(ids)
        self._wake.set()

    def handle(self, ids: list[str]) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.every_s)  # let a set gather
            self._wake.clear()
            with self._lock:
                ids, self._pending = sorted(self._pending), set()
            if ids:
                try:
                    self.handle(ids)
                except Exception:  # handle should not raise; the thread must not die of it
                    log.exception("a gatherer's handler failed", extra={"ids": len(ids)})
