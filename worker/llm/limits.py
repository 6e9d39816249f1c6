"""``AGENTQ_LLM_LIMITS``: each model's requests and tokens a minute, across every worker.

A provider's quota belongs to its API key, which every worker shares, so the count lives in
Redis and each try of a call takes its share first (``Limits.acquire``): a request is one
entry in the model's log of the last window's requests (a sorted set: exact, never one
over in any window), and its tokens come out of the model's token bucket (refilled at the
limit's rate). One Lua script decides and takes both, with Redis's own clock, so workers on
different hosts agree. Tokens cannot be known before the answer: a try takes the prompt's
estimate (four characters a token) plus ``max_tokens`` if asked, and the call's real usage
settles the difference after (``Limits.settle``), so a bucket may go below zero and the
next calls wait for it.

Over the limit, the call waits if what is left of its attempt allows, else the attempt ends
with ``LLMRateLimited`` (retryable, with the wait as its delay, and not counted against the
run's attempts: ``worker.execution.execute``). If Redis does not answer, calls go on
unlimited (logged): the limiter must not stop the agents it protects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import redis

from worker.base.bus import Bus
from worker.base.errors import Deferred
from worker.base.settings import LLMRate

log = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0
_KEY = "agentq:llm-limit:{%s}"  # a hash tag: a model's two keys share a Redis Cluster slot

# KEYS: the model's request log (a sorted set of times), its token bucket (a hash).
# ARGV: requests, request window (ms), tokens, token window (ms), this try's tokens, its id.
# Returns 0 (taken) or the milliseconds to wait before trying again (nothing taken).
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local requests, request_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, token_window = tonumber(ARGV[3]), tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local wait = 0
if requests > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - request_window)
  local used = redis.call('ZCARD', KEYS[1])
  if used >= requests then
    local edge = redis.call('ZRANGE', KEYS[1], used - requests, used - requests, 'WITHSCORES')
    wait = math.max(1, tonumber(edge[2]) + request_window - now)
  end
end
local level = 0
if tokens > 0 then
  local state = redis.call('HMGET', KEYS[2], 'level', 'at')
  level = tonumber(state[1]) or tokens
  local at = tonumber(state[2]) or now
  level = math.min(tokens, level + math.max(0, now - at) * tokens / token_window)
  cost = math.min(cost, tokens)  -- a try never takes more than the whole bucket
  if level < cost then
    wait = math.max(wait, math.ceil((cost - level) * token_window / tokens))
  end
end
wait = math.min(wait, 2 * math.max(request_window, token_window))
if wait == 0 then
  if requests > 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[6])
    redis.call('PEXPIRE', KEYS[1], request_window)
  end
  level = level - cost
end
if tokens > 0 then
  redis.call('HSET', KEYS[2], 'level', level, 'at', now)
  redis.call('PEXPIRE', KEYS[2], token_window * 2)
end
return wait
"""

# KEYS: the model's token bucket. ARGV: tokens, token window (ms), tokens used beyond (or,
# negative, short of) what the try took.
_SETTLE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tokens, token_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or tokens
local at = tonumber(state[2]) or now
level = math.min(tokens, level + math.max(0, now - at) * tokens / token_window)
level = math.max(-tokens, math.min(tokens, level - tonumber(ARGV[3])))
redis.call('HSET', KEYS[1], 'level', level, 'at', now)
redis.call('PEXPIRE', KEYS[1], token_window * 2)
return 0
"""


class LLMRateLimited(Deferred):
    """The model's limit (``AGENTQ_LLM_LIMITS``) leaves no room within this attempt: the
    run is tried again when there is (an attempt that does not count)."""


class Limits:
    """One process's view of ``AGENTQ_LLM_LIMITS`` (Redis holds the counts). A model the
    limits do not name shares the ``*`` limit with every other such model (the names are
    the agents' to choose: one bucket each would bound nothing)."""

    def __init__(self, limits: dict[str, LLMRate], bus: Bus) -> None:
        self._limits = limits
        self._redis = bus.redis
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)
        self._warned_at = -_WARN_EVERY_S

    def key_of(self, model: str) -> str | None:
        """The limit ``model``'s calls count against: its own, ``*``, or none."""
        if model in self._limits:
            return model
        return "*" if "*" in self._limits else None

    async def acquire(self, model: str, cost: int) -> tuple[float, int]:
        """Take one request and ``cost`` tokens (at most the whole bucket) of the model's
        limit: (0.0, the tokens taken), else (the seconds until there may be room, 0):
        nothing was taken. Unchecked (no limit, Redis not answering): (0.0, 0)."""
        key = self.key_of(model)
        if key is None:
            return 0.0, 0
        rate = self._limits[key]
        cost = min(cost, rate.tokens) if rate.tokens else 0
        args = [rate.requests, int(rate.request_window_s * 1000), rate.tokens,
                int(rate.token_window_s * 1000), cost, uuid.uuid4().hex]
        waited_ms = await self._call(self._acquire,
                                     [f"{_KEY % key}:requests", f"{_KEY % key}:tokens"], args)
        if waited_ms is None:
            return 0.0, 0
        wait = max(0, int(waited_ms)) / 1000
        return (wait, 0) if wait else (0.0, cost)

    async def settle(self, model: str, *, taken: int, used: int) -> None:
        """A call took ``taken`` tokens of the bucket and used ``used``: even it up (a try
        that failed uses none)."""
        key = self.key_of(model)
        if key is None or not taken or used == taken:
            return
        rate = self._limits[key]
        await self._call(self._settle, [f"{_KEY % key}:tokens"],
                         [rate.tokens, int(rate.token_window_s * 1000), used - taken])

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await asyncio.to_thread(script, keys=keys, args=args)
        except redis.RedisError as error:  # fail open, and say so once a minute at most
            if time.monotonic() - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("llm rate limits not checked: Redis did not answer",
                            extra={"error": str(error)})
            return None


def cost_of(body: dict[str, Any]) -> int:
    """The tokens a try takes before its answer says: the prompt's estimate and, if the
    request bounds it, the longest answer."""
    longest = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    bound = longest if isinstance(longest, int) and longest > 0 else 0
    return estimate_tokens(json.dumps(body.get("messages"))) + bound


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` as a rule of thumb has it (four characters each, rounded up)."""
    return -(-len(text) // 4)
