"""What an API process remembers of valid keys, and how a revocation reaches every process:
announced over Redis, it clears every process's memory and ends what the key holds open
there (``worker.access.grants``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import redis

from worker.access.grants import Grants
from worker.access.keys import Principal
from worker.base.runtime import Runtime


class KeyCache:
    """What an API process remembers of valid keys, to spare the database a lookup on
    every request. Entries last ``AGENTQ_KEY_CACHE_S``; a revocation anywhere is announced
    on Redis (with the key's id) and clears every process's cache at once (the TTL bounds
    the staleness if the announcement is lost), and ``on_revoked`` ends what the key holds
    open in this process (its streams and sockets).

    A lookup races a revocation: read the key (live), the key is revoked, then remember
    it. So ``put`` takes the ``generation`` read before the lookup, and remembers nothing
    if any revocation was heard since.
    """

    CHANNEL = "agentq:keys:revoked"

    @classmethod
    def of(cls, rt: Runtime) -> KeyCache:
        """This process's cache; a revocation it hears of ends what the key holds open."""
        settings = rt.settings
        return rt.own("key_cache", lambda: cls(
            settings.redis_url, settings.key_cache_s,
            on_revoked=lambda key_id: Grants.of(rt).revoked(key_id)))

    def __init__(self, redis_url: str, ttl_s: float,
                 on_revoked: Callable[[str | None], None] | None = None) -> None:
        self.pid = os.getpid()
        self._ttl_s = ttl_s
        self._on_revoked = on_revoked
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._pubsub = redis.Redis.from_url(redis_url, socket_connect_timeout=2).pubsub(
            ignore_subscribe_messages=True)
        threading.Thread(target=self._listen, name="agentq-key-cache", daemon=True).start()

    @property
    def generation(self) -> int:
        """Read before looking a key up; pass to ``put``."""
        return self._generation

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, caller: Principal, *, generation: int) -> None:
        """Remember a key looked up at ``generation``, unless a revocation came since."""
        if self._ttl_s <= 0:
            return
        with self._lock:
            if generation == self._generation:
                self._entries[key_hash] = (caller, time.monotonic() + self._ttl_s)

    def forget(self, key_id: str | None = None) -> None:
        """Drop every remembered key: this process revoked ``key_id``, or heard of a
        revocation (None: of some key, unknown, while it was not listening)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
        if self._on_revoked is not None:
            self._on_revoked(key_id)

    def _listen(self) -> None:
        while True:
            try:
                if not self._pubsub.channels:
                    self._pubsub.subscribe(self.CHANNEL)
                    self.forget()  # (re)subscribed: anything may have been missed
                message = self._pubsub.get_message(timeout=5.0)
                if message is not None:
                    data = message.get("data")
                    self.forget(data.decode() if isinstance(data, bytes) else None)
            except (redis.RedisError, OSError):
                self.forget()
                time.sleep(1.0)


def announce_revocation(redis_client: redis.Redis, key_id: str) -> None:
    """Tell every API process to forget the keys it remembers and to end what ``key_id``
    holds open (best effort: else caches expire in AGENTQ_KEY_CACHE_S, and open streams
    notice at their next check)."""
    with contextlib.suppress(redis.RedisError):
        redis_client.publish(KeyCache.CHANNEL, key_id)




def revoked(rt: Runtime, key_id: str) -> None:
    """After a revocation committed: end what the key holds open and forget it, here at once
    and in every other process when it hears of it."""
    announce_revocation(rt.bus.redis, key_id)  # first: nothing here may delay it
    KeyCache.of(rt).forget(key_id)
