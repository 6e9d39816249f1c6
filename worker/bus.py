"""Wake-ups over Redis pub/sub: "run X has news", so waiters need not poll.

Redis carries wake-ups only. Postgres holds the news itself, so a lost message costs a
waiter at most one fallback interval, never data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)


def run_channel(run_id: str) -> str:
    return f"agentq:run:{run_id}"


class Bus:
    """Announce run changes after commit; let waiters block until one arrives."""

    def __init__(self, redis_url: str) -> None:
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )

    def announce(self, run_id: str, seq: int) -> None:
        """Tell listeners of ``run_id`` that event ``seq`` is committed; never raise."""
        try:
            self.redis.publish(run_channel(run_id), seq)
        except redis.RedisError as error:
            log.warning("bus announce failed", extra={"run_id": run_id, "error": str(error)})

    @contextmanager
    def listen(self, run_id: str) -> Iterator[Listener]:
        """Subscribe to ``run_id``; subscribe *before* reading state so no news is missed."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(run_channel(run_id))
        except redis.RedisError as error:
            log.warning("bus listen degraded to polling", extra={"run_id": run_id,
                                                                 "error": str(error)})
            pubsub.close()
            yield Listener(None)
            return
        try:
            yield Listener(pubsub)
        finally:
            pubsub.close()


class Listener:
    """A subscription; ``wait`` returns when news arrives or the timeout passes."""

    def __init__(self, pubsub: redis.client.PubSub | None) -> None:
        self._pubsub = pubsub

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a message arrived."""
        if self._pubsub is None:
            time.sleep(timeout)
            return False
        try:
            return self._pubsub.get_message(timeout=timeout) is not None
        except redis.RedisError:
            self._pubsub = None
            time.sleep(timeout)
            return False
