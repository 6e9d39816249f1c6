"""Each credential's request budget (``AGENTQ_RATE_LIMIT_PER_MINUTE``), counted in Redis so
every API process shares it: HTTP requests and WebSocket frames alike."""

from __future__ import annotations

import logging
import time

import redis

from worker.base.errors import LimitExceeded

log = logging.getLogger(__name__)


def spend(client: redis.Redis, *, bucket: str, per_minute: int) -> None:
    """Count one request against ``bucket``'s minute; LimitExceeded once it is spent.
    Fails open: an outage of Redis must not stop the API."""
    if not per_minute:
        return
    now = time.time()
    counter = f"agentq:rate:{bucket}:{int(now // 60)}"
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, 61)
            count, _ = pipe.execute()
    except redis.RedisError as error:
        log.warning("rate limit not checked", extra={"error": str(error)})
        return
    if count > per_minute:
        raise LimitExceeded(f"over {per_minute} requests a minute for this credential "
                            "(AGENTQ_RATE_LIMIT_PER_MINUTE)",
                            retry_after_s=max(1, int(60 - now % 60)))
