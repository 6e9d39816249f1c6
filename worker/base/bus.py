"""Wake-ups over Redis pub/sub: committed run events, token frames, and cancel requests.

Redis carries news only. Postgres holds the events themselves, so a lost message costs a
listener a catch-up read, never data: every listener resumes from the last ``seq`` it saw.

- Writers ``announce`` each event once its transaction has committed.
- An API process keeps one ``Hub``: a single pub/sub connection, whatever the number of
  streams, that subscribes a run's channel while someone watches it and fans its events
  out to the watchers in this process.
- A worker process keeps one ``CancelListener`` for cancel requests of its running attempts.
- Token frames (``worker.base.tokens``) are the exception: Redis is all there is of them.
  Each is published on its run's token channel and appended to its call's list (kept
  ``TOKEN_TTL_S``), in the same pipeline and in the same order as the run's events.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any

import redis
import redis.client

from worker.base import breakers
from worker.base.event import Event
from worker.base.tokens import Partial, Token, partial

log = logging.getLogger(__name__)

RUN_PREFIX = "agentq:run:"
TENANT_PREFIX = "agentq:tenant:"  # every run's terminal event, for tenant-wide listeners
CANCEL_PREFIX = "agentq:cancel:"
TOKENS_PREFIX = "agentq:tokens:"  # a run's token frames, live
CALLS_PREFIX = "agentq:calls:"  # a run's streamed calls in progress (a set of step names)
CALL_PREFIX = "agentq:call:"  # one call's frames so far (a list), for listeners who join late
TOKEN_TTL_S = 3600  # a call's frames outlive it this long at most
ENDED_TTL_S = 120  # ... and once it has ended, this long
RESYNC = "resync"  # what a watcher receives when it may have missed events
_WATCH_BACKLOG = 1000
_PUBLISH_BACKLOG = 100_000  # announcements waiting for the publisher thread (then dropped)
_PUBLISH_BATCH = 500  # announcements in one pipeline at most
_POOL_SIZE = 100  # connections of one client at most (redis-py's default bound)


# (publish | append | expire | add | remove | delete | barrier, key, value)
_Op = tuple[str, str, str]


class _Guarded(redis.Redis):
    """A Redis client whose commands and pipelines go through its server's breaker
    (``worker.base.breakers``): while Redis is known not to answer, they fail at once."""

    breaker: Any = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return self.breaker.call(lambda: super(_Guarded, self).execute_command(
            *args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = _GuardedPipeline(self.connection_pool, self.response_callbacks, transaction,
                                shard_hint)
        pipe.breaker = self.breaker
        return pipe


class _GuardedPipeline(redis.client.Pipeline):
    breaker: Any = None

    def execute(self, raise_on_error: bool = True) -> Any:
        return self.breaker.call(lambda: super(_GuardedPipeline, self).execute(
            raise_on_error))


def _client(redis_url: str, timeout_s: float, *, guarded: bool = False) -> redis.Redis:
    """A client whose every call ends within ``timeout_s`` (a link that hangs included).

    Its pool holds ``_POOL_SIZE`` connections, and a call that finds them all in use waits
    (``timeout_s`` at most) for one to come back. redis-py's own pool raises at once
    instead (``MaxConnectionsError``, past 100): 200 streams of one API process reading a
    call's list at its step's end would then fail, and trip the breaker as though Redis
    were down, for a pool that was only busy for a millisecond."""
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=_POOL_SIZE, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=min(2.0, timeout_s), socket_keepalive=True,
        health_check_interval=30)
    if not guarded:
        return redis.Redis.from_pool(pool)
    client = _Guarded.from_pool(pool)
    assert isinstance(client, _Guarded)
    client.breaker = breakers.of(redis_url, reset_s=timeout_s)
    return client


def encode(event: Event) -> str:
    return json.dumps({"run_id": event.run_id, "seq": event.seq, "type": event.type,
                       "data": event.data, "at": event.at.isoformat()})


def decode(payload: bytes | str) -> Event:
    body = json.loads(payload)
    return Event(body["run_id"], int(body["seq"]), body["type"], body["data"],
                 datetime.fromisoformat(body["at"]))


class Bus:
    """Publish committed events and cancel requests; never raises on Redis trouble."""

    def __init__(self, redis_url: str, *, timeout_s: float = 5.0) -> None:
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self.redis = _client(redis_url, timeout_s, guarded=True)
        self._hub: Hub | None = None
        self._hub_lock = threading.Lock()
        self._outgoing: queue.Queue[list[_Op]] | None = None
        self._barriers: dict[str, threading.Event] = {}

    def announce(self, committed: list[Event], tenants: dict[str, str] | None = None) -> None:
        """Publish events after their transaction committed (one round trip, or handed to
        the publisher thread: ``publish_in_background``). Terminal events also go to their
        tenant's channel (``tenants`` maps run ids to tenants)."""
        tenants = tenants or {}
        # Event 1 of a run is its creation: no one can be watching a run before they know
        # its id, so there is nobody to tell (the tenant channel only carries ends).
        messages: list[_Op] = []
        for event in committed:
            if event.seq > 1:
                encoded = encode(event)
                messages.append(("publish", RUN_PREFIX + event.run_id, encoded))
                if event.is_terminal and event.run_id in tenants:
                    messages.append(("publish", TENANT_PREFIX + tenants[event.run_id],
                                     encoded))
        if messages:
            self._send(messages)

    def call_started(self, reset: Token, *, announce: bool) -> None:
        """A streamed call's try begins: its list starts again with ``reset`` (published
        too if ``announce``: listeners drop an earlier try's text)."""
        call, encoded = CALL_PREFIX + f"{reset.run_id}:{reset.step}", reset.encode()
        ops: list[_Op] = [("delete", call, ""), ("append", call, encoded),
                          ("expire", call, ""), ("add", CALLS_PREFIX + reset.run_id, reset.step),
                          ("expire", CALLS_PREFIX + reset.run_id, "")]
        if announce:
            ops.append(("publish", TOKENS_PREFIX + reset.run_id, encoded))
        self._send(ops)

    def token(self, frame: Token) -> None:
        """Publish a chunk of a call's text and keep it in the call's list; like
        ``announce``, in order, never raising."""
        encoded, call = frame.encode(), CALL_PREFIX + f"{frame.run_id}:{frame.step}"
        self._send([("append", call, encoded), ("expire", call, ""),
                    ("publish", TOKENS_PREFIX + frame.run_id, encoded)])

    def call_ended(self, run_id: str, step: str) -> None:
        """A streamed call ended: no longer in progress (a listener joining now gets its
        text from its result), its frames kept a little longer for the listeners whose live
        feed is behind (``call``)."""
        self._send([("remove", CALLS_PREFIX + run_id, step),
                    ("expire", CALL_PREFIX + f"{run_id}:{step}", str(ENDED_TTL_S))])

    def call(self, run_id: str, step: str) -> Partial | None:
        """One streamed call's frames as Redis holds them (RedisError if unreachable)."""
        entries = self.redis.lrange(CALL_PREFIX + f"{run_id}:{step}", 0, -1)
        return partial([Token.decode(entry) for entry in entries])

    def calls(self, run_id: str) -> dict[str, Partial]:
        """The run's streamed calls in progress as Redis holds them (RedisError if it is
        unreachable)."""
        steps = sorted(name.decode() if isinstance(name, bytes) else name
                       for name in self.redis.smembers(CALLS_PREFIX + run_id))
        if not steps:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for step in steps:
                pipe.lrange(CALL_PREFIX + f"{run_id}:{step}", 0, -1)
            lists = pipe.execute()
        found = {}
        for step, entries in zip(steps, lists, strict=True):
            call = partial([Token.decode(entry) for entry in entries])
            if call is not None:
                found[step] = call
        return found

    def sync(self, timeout_s: float) -> bool:
        """Wait until what was announced before has been sent to Redis (at most
        ``timeout_s``): a streamed call's last pieces reach Redis before its step is stored."""
        if self._outgoing is None:
            return True
        done = threading.Event()
        key = f"{id(done)}:{time.monotonic()}"
        self._barriers[key] = done
        try:
            self._send([("barrier", key, "")])
            return done.wait(timeout_s)
        finally:
            self._barriers.pop(key, None)

    def _send(self, ops: list[_Op]) -> None:
        if self._outgoing is not None:
            try:
                self._outgoing.put_nowait(ops)
            except queue.Full:
                log.warning("bus backlog full; listeners will catch up from Postgres",
                            extra={"channel": ops[0][1]})
            return
        self._publish(ops)

    def publish_in_background(self) -> None:
        """Announce from one publisher thread from now on: what writers announce while it
        publishes goes out together in its next pipeline (a worker holding hundreds of
        runs makes one round trip for many events, not one each). A listener hears as
        soon as the thread reaches it; no delay is added."""
        if self._outgoing is None:
            self._outgoing = queue.Queue(maxsize=_PUBLISH_BACKLOG)
            threading.Thread(target=self._publish_forever, args=(self._outgoing,),
                             name="agentq-bus-publisher", daemon=True).start()

    def _publish_forever(self, outgoing: queue.Queue[list[_Op]]) -> None:
        while True:
            messages = outgoing.get()
            while len(messages) < _PUBLISH_BATCH:
                try:
                    messages += outgoing.get_nowait()
                except queue.Empty:
                    break
            self._publish(messages)

    def _publish(self, ops: list[_Op]) -> None:
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for op, key, value in ops:
                    if op == "barrier":
                        continue
                    if op == "publish":
                        pipe.publish(key, value)
                    elif op == "append":
                        pipe.rpush(key, value)
                    elif op == "expire":
                        pipe.expire(key, int(value) if value else TOKEN_TTL_S)
                    elif op == "add":
                        pipe.sadd(key, value)
                    elif op == "remove":
                        pipe.srem(key, value)
                    else:
                        pipe.delete(key)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("bus announce failed; listeners will catch up from Postgres",
                        extra={"channel": ops[0][1], "error": str(error)})
        finally:
            for op, key, _ in ops:
                if op == "barrier" and key in self._barriers:
                    self._barriers[key].set()

    def request_cancel(self, run_id: str) -> None:
        """Tell the worker running ``run_id`` to stop; the database is the fallback."""
        try:
            self.redis.publish(CANCEL_PREFIX + run_id, "cancel")
        except redis.RedisError as error:
            log.warning("cancel notice not sent; the worker will see it at its next heartbeat",
                        extra={"run_id": run_id, "error": str(error)})

    @property
    def hub(self) -> Hub:
        """This process's hub (made on first use, and again after a fork)."""
        with self._hub_lock:  # two at once would make two hubs, each with its connection
            if self._hub is None or self._hub.pid != os.getpid():
                self._hub = Hub(self.redis_url, self.timeout_s)
            return self._hub


class Watch:
    """One listener's view of a run's channel: committed events, in arrival order."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._items: queue.Queue[Event | Token | str] = queue.Queue(maxsize=_WATCH_BACKLOG)

    def put(self, item: Event | Token | str) -> None:
        try:
            self._items.put_nowait(item)
        except queue.Full:  # a slow reader: drop, and make it catch up from Postgres
            self._drain()
            self._items.put_nowait(RESYNC)

    def next(self, timeout: float) -> Event | Token | str | None:
        """The next event (or token frame), RESYNC (catch up from Postgres, and from the
        calls' lists), or None after ``timeout``."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def _drain(self) -> None:
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                return


class Hub:
    """One pub/sub connection per process, shared by every watcher in it.

    A pub/sub connection only reads, so a link that hangs would look like a quiet one for
    ever: while anyone watches, the hub pings Redis every ``timeout_s``, and a ping not
    answered within ``timeout_s`` counts as the connection lost (it is closed, the watchers
    catch up from Postgres, and a new connection subscribes again). ``live`` says whether
    Redis has answered lately; while it has not, ``follow`` polls Postgres every second.
    """

    def __init__(self, redis_url: str, timeout_s: float) -> None:
        self.pid = os.getpid()
        self._timeout_s = timeout_s
        self._heard = time.monotonic()  # anything from Redis, a pong included
        self._pinged: float | None = None  # when the ping not yet answered was sent
        self._pubsub = _client(redis_url, timeout_s).pubsub()
        self._lock = threading.Lock()
        # redis-py's PubSub is not safe to share: two first subscribes at once open two
        # connections, and the one not kept is never read. One (un)subscribe at a time.
        self._send_lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._confirmed: dict[str, threading.Event] = {}
        self._stale: set[str] = set()  # channels whose watchers must catch up on resubscribe
        self.healthy = True
        threading.Thread(target=self._listen, name="agentq-hub", daemon=True).start()

    @property
    def live(self) -> bool:
        """Whether events reach this hub now: subscribed, and Redis heard from lately."""
        return self.healthy and time.monotonic() - self._heard < 2 * self._timeout_s + 1

    @contextmanager
    def watch(self, run_id: str, *, tokens: bool = False) -> Iterator[Watch]:
        """Watch a run's events (see ``watch_channel``), and its token frames too if asked
        (in the same watch, in the order they were published)."""
        with self.watch_channel(RUN_PREFIX + run_id) as watch:
            if not tokens:
                yield watch
                return
            with self.watch_channel(TOKENS_PREFIX + run_id, watch=watch):
                yield watch

    def watch_tenant(self, tenant_id: str) -> AbstractContextManager[Watch]:
        """Watch the terminal events of every run of a tenant."""
        return self.watch_channel(TENANT_PREFIX + tenant_id)

    @contextmanager
    def watch_channel(self, channel: str, *, ready_timeout: float = 2.0,
                      watch: Watch | None = None) -> Iterator[Watch]:
        """Watch a channel (into ``watch`` if given); the subscription is confirmed before
        this yields.

        Confirmation matters: any event committed after it reaches the watcher, and any
        event committed before it is in Postgres for the watcher's catch-up read.
        """
        watch = watch or Watch(channel)
        with self._lock:
            watchers = self._watches.setdefault(channel, set())
            first = not watchers
            watchers.add(watch)
            confirmed = self._confirmed.setdefault(channel, threading.Event())
        try:
            if first:
                self._send(self._pubsub.subscribe, channel)
            if not confirmed.wait(ready_timeout):
                watch.put(RESYNC)  # not confirmed in time: the reader must poll Postgres
            yield watch
        finally:
            with self._lock:
                watchers.discard(watch)
                last = not watchers
                if last:
                    self._watches.pop(channel, None)
                    self._confirmed.pop(channel, None)
            if last:
                self._send(self._pubsub.unsubscribe, channel)

    def _send(self, command: Callable[..., Any], channel: str) -> None:
        try:
            with self._send_lock:
                command(channel)
        except redis.RedisError as error:
            self.healthy = False
            log.warning("hub could not (un)subscribe", extra={"error": str(error)})

    def _listen(self) -> None:
        pause = 0.5
        while True:
            try:
                if not self.healthy:
                    self._resubscribe()
                self._check_alive()
                message = self._pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as error:
                self._broken(error)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            if message is not None:
                self._heard = time.monotonic()
                self._pinged = None
                self._dispatch(message)

    def _check_alive(self) -> None:
        """Ping while anyone watches; a ping unanswered within the timeout: the link hangs."""
        now = time.monotonic()
        if self._pinged is not None and now - self._pinged > self._timeout_s:
            self._pinged = None
            with self._send_lock:
                self._pubsub.reset()  # closes the connection; the channels are subscribed anew
            raise redis.TimeoutError(f"Redis did not answer a ping within {self._timeout_s:g} s")
        with self._lock:
            watched = bool(self._watches)
        if watched and self._pinged is None and now - self._heard > self._timeout_s:
            with self._send_lock:
                self._pubsub.ping()
            self._pinged = now

    def _resubscribe(self) -> None:
        """After an outage, subscribe the watched channels Redis does not know of."""
        with self._lock:
            wanted = set(self._watches)
        known = {name.decode() if isinstance(name, bytes) else name
                 for name in self._pubsub.channels}
        missing = sorted(wanted - known)
        if missing:
            with self._send_lock:
                self._pubsub.subscribe(*missing)
        self.healthy = True

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind not in ("subscribe", "message"):  # a pong (no channel), an unsubscribe
            return
        channel = message["channel"].decode()
        if kind == "subscribe":
            with self._lock:
                confirmed = self._confirmed.get(channel)
                watchers = list(self._watches.get(channel, ()))
                stale = channel in self._stale
                self._stale.discard(channel)
            if confirmed is not None:
                confirmed.set()
            if stale:  # resubscribed after an outage: events in between were not heard
                for watch in watchers:
                    watch.put(RESYNC)
            return
        if kind != "message":
            return
        try:
            item = (Token.decode(message["data"]) if channel.startswith(TOKENS_PREFIX)
                    else decode(message["data"]))
        except (ValueError, KeyError, TypeError):  # not ours, or another version's
            log.warning("hub dropped a message it cannot read", extra={"channel": channel})
            return
        with self._lock:
            watchers = list(self._watches.get(channel, ()))
        for watch in watchers:
            watch.put(item)

    def _broken(self, error: BaseException) -> None:
        if self.healthy:
            log.warning("hub lost Redis; watchers fall back to Postgres",
                        extra={"error": str(error)})
        self.healthy = False
        with self._lock:
            self._stale.update(self._watches)
            watchers = [w for group in self._watches.values() for w in group]
        for watch in watchers:
            watch.put(RESYNC)


class CancelListener:
    """A worker process's one subscription to cancel requests (``agentq:cancel:*``)."""

    def __init__(self, redis_url: str, on_cancel: Callable[[str], None], *,
                 timeout_s: float = 5.0) -> None:
        self._pubsub = _client(redis_url, timeout_s).pubsub(ignore_subscribe_messages=True)
        self._on_cancel = on_cancel
        threading.Thread(target=self._listen, name="agentq-cancels", daemon=True).start()

    def _listen(self) -> None:
        pause = 0.5
        while True:
            try:
                if not self._pubsub.patterns:
                    self._pubsub.psubscribe(CANCEL_PREFIX + "*")
                message = self._pubsub.get_message(timeout=5.0)
            except (redis.RedisError, OSError):
                time.sleep(pause)  # the heartbeat reads cancel requests from Postgres too
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            if message is not None and message["type"] == "pmessage":
                self._on_cancel(message["channel"].decode().removeprefix(CANCEL_PREFIX))
