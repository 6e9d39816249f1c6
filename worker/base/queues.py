"""The Celery side: the app's configuration, the queues, the task names, and what a run's
message carries (``Dispatch``). The tasks themselves are ``worker.app``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import kombu.transport
import redis
from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.transport import redis as kombu_redis

from worker.base.settings import Settings

RUN_TASK = "agentq.run"
SWEEP_TASK = "agentq.sweep"
SCHEDULES_TASK = "agentq.schedules"
DELIVER_TASK = "agentq.deliver"
PRIORITIES = ("high", "normal", "low")
RUNS_QUEUE = "runs.normal"
RUN_QUEUES = tuple(f"runs.{priority}" for priority in PRIORITIES)
MAINTENANCE_QUEUE = "maintenance"
NOTIFY_QUEUE = "notify"
CPU_QUEUE = "cpu"  # CPU-bound agents: served by a prefork worker (the Procfile's cpu)

# Publishing must not hang a request: a few quick tries, then the outbox takes over.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.5}


def _queue(name: str) -> Queue:
    # One direct exchange per queue: a message routed to one queue never lands in another.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def declare_queue(name: str, channel: Any) -> int:
    """Declare the queue (exchange and binding too) on ``channel``; return its depth."""
    queue = _queue(name).bind(channel)
    queue.declare()
    return int(queue.queue_declare().message_count)


class _RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one client for its plain commands: kombu builds a new
    ``redis.Redis`` for each (every ack, every publish), and building one (its few hundred
    response callbacks) was a twentieth of a busy worker's CPU. A client is thread-safe;
    each command still takes a connection from the channel's pool."""

    @cached_property
    def _client_kept(self) -> redis.Redis:
        client: redis.Redis = self._create_client()
        return client

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._client_kept


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, with ``_RedisChannel``."""

    Channel = _RedisChannel


# redis:// URLs name kombu's transport by the alias "redis": pointing the alias here (and not
# naming the class in broker_transport) leaves every URL as it is, Flower's broker view too.
kombu.transport.TRANSPORT_ALIASES["redis"] = f"{__name__}:RedisTransport"
getattr(kombu.transport, "_transport_cache", {}).pop("redis", None)


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from the settings (JSON only, late acks, prefetch 1)."""
    app = Celery("agentq", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits out a broker outage
        broker_connection_timeout=min(4.0, settings.dependency_timeout_s / 3),
        # Keep running attempts alive through a broker blip. Celery's alternative terminates
        # them so their unacked messages can be redelivered; here the lease already stops a
        # redelivered message from starting the run twice, so terminating would only turn a
        # blip into a second attempt.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options=_transport_options(settings),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No worker_pool here: Celery takes an explicit --pool prefork for its CLI default
        # and replaces it with worker_pool, so the cpu process could not be prefork. The
        # Procfile names each process's pool (--pool threads: the engine's workers).
        task_default_queue=RUNS_QUEUE,
        task_default_exchange=RUNS_QUEUE,
        task_default_routing_key=RUNS_QUEUE,
        # A worker started without -Q consumes every queue here (high first); name queues
        # with -Q to give high-priority runs workers of their own.
        task_queues=tuple(_queue(name) for name in (*RUN_QUEUES, MAINTENANCE_QUEUE,
                                                     NOTIFY_QUEUE, CPU_QUEUE)),
        task_routes={SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
                     SCHEDULES_TASK: {"queue": MAINTENANCE_QUEUE},
                     DELIVER_TASK: {"queue": NOTIFY_QUEUE}},
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # what Flower shows; "task-sent" events would cost
        task_send_sent_event=False,    # every submission another Redis publish
        enable_utc=True,
        timezone="UTC",
        beat_schedule_filename=settings.beat_schedule_file,
        beat_schedule={
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval_s,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.sweep_interval_s * 3},
            },
            "schedules": {  # each due slot of each schedule becomes a run (worker.runs)
                "task": SCHEDULES_TASK,
                "schedule": settings.schedule_tick_s,
                "options": {"queue": MAINTENANCE_QUEUE,
                            "expires": max(settings.schedule_tick_s * 3, 3.0)},
            },
        },
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    """The broker connection's bounds. A publish is two tries at most
    (PUBLISH_RETRY_POLICY), a failed try, a reconnect and a second try a third of the
    dependency timeout each: within it in all, even when the link hangs."""
    third = settings.dependency_timeout_s / 3
    if settings.celery_broker_url.startswith(("amqp", "pyamqp")):  # py-amqp's own names
        # py-amqp: socket read and write timeouts (its TCP keepalives are on by default), and
        # publisher confirms, so a publish counts only once RabbitMQ has taken the message
        # (without them a publish into a hung link would "succeed" into the socket buffer).
        return {"read_timeout": third, "write_timeout": third, "confirm_publish": True}
    return {
        # Longer than the longest run allowed, so Redis never hands a running run's message
        # to a second worker (issue: redelivery after visibility timeout).
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_connect_timeout": min(5.0, third),
        "socket_timeout": third,
        "socket_keepalive": True,
    }


@dataclass(frozen=True)
class Dispatch:
    """What publishing a run takes: its id, its queue, its time limit and its agent (in the
    message, so a worker can hold back a sync agent's run, unclaimed, until it has a thread
    free for it). ``held``: its claim may be refused (it has a session or a concurrency
    key), so it is marked dispatched before its message can be taken."""

    run_id: str
    queue: str
    timeout_s: int
    countdown_s: float | None = None
    agent: str | None = None
    held: bool = False

    @classmethod
    def of(cls, run: Any, *, countdown_s: float | None = None,
           held: bool | None = None) -> Dispatch:
        """The dispatch of ``run`` (a ``Run`` or a row with its id, queue, timeout_s and
        agent; ``held`` is read from its session and key when it has them)."""
        if held is None:
            held = (getattr(run, "session_id", None) is not None
                    or getattr(run, "concurrency_key", None) is not None)
        return cls(run.id, run.queue, run.timeout_s, countdown_s=countdown_s, agent=run.agent,
                   held=held)
