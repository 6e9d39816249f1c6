"""The Celery side: configuration, queues and the (thin) tasks.

Tasks take ids, never objects, and hand over to domain functions at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from kombu.entity import Exchange, Queue
from sqlalchemy.exc import InterfaceError, OperationalError

from worker.base.settings import Settings

if TYPE_CHECKING:
    from worker.base.runtime import Runtime

RUN_TASK = "agentq.run"
SWEEP_TASK = "agentq.sweep"
DELIVER_TASK = "agentq.deliver"
PRIORITIES = ("high", "normal", "low")
RUNS_QUEUE = "runs.normal"
RUN_QUEUES = tuple(f"runs.{priority}" for priority in PRIORITIES)
MAINTENANCE_QUEUE = "maintenance"
NOTIFY_QUEUE = "notify"

# Publishing must not hang a request: a few quick tries, then the outbox takes over.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.5}


def _queue(name: str) -> Queue:
    # One direct exchange per queue: a message routed to one queue never lands in another.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def declare_queue(name: str, channel: Any) -> int:
    """Declare the queue (exchange and binding too) on ``channel``; return its depth."""
    queue = _queue(name).bind(channel)
    queue.declare()
    return int(queue.queue_declare().message_count)


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from the settings (JSON only, late acks, prefetch 1)."""
    app = Celery("agentq", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits out a broker outage
        broker_connection_timeout=4,
        # Keep running attempts alive through a broker blip. Celery's alternative terminates
        # them so their unacked messages can be redelivered; here the lease already stops a
        # redelivered message from starting the run twice, so terminating would only turn a
        # blip into a second attempt.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            # Longer than the longest run allowed, so Redis never hands a running run's
            # message to a second worker (issue: redelivery after visibility timeout).
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": 5,
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=RUNS_QUEUE,
        task_default_exchange=RUNS_QUEUE,
        task_default_routing_key=RUNS_QUEUE,
        # A worker started without -Q consumes every queue here (high first); name queues
        # with -Q to give high-priority runs workers of their own.
        task_queues=tuple(_queue(name) for name in (*RUN_QUEUES, MAINTENANCE_QUEUE,
                                                     NOTIFY_QUEUE)),
        task_routes={SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
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
        },
    )
    return app


def register_tasks(rt: Runtime) -> None:
    """Attach agentq's tasks to the runtime's Celery app."""
    from worker.delivery import notifier
    from worker.execution import execute as execution
    from worker.runs import sweeper

    @rt.celery.task(name=RUN_TASK, bind=True)
    def run(task: Task, run_id: str) -> None:
        """Execute one attempt of run ``run_id`` (a no-op if it is not claimable)."""
        try:
            execution.execute(rt, run_id=run_id, worker=task.request.hostname or "unknown")
        except (OperationalError, InterfaceError) as error:
            # Postgres is away: try the claim again later rather than drop the message.
            raise task.retry(exc=error, countdown=2, max_retries=None) from error

    # No task events (Flower): three Redis publishes per delivery, a sixth of the notifier's
    # CPU; a delivery's attempts are in the database and in agentq_deliveries instead.
    @rt.celery.task(name=DELIVER_TASK, acks_late=False, send_events=False)
    def deliver(delivery_id: str) -> None:
        """Make one attempt of webhook delivery ``delivery_id`` (a no-op if not due)."""
        notifier.deliver(rt, delivery_id=delivery_id)

    @rt.celery.task(name=SWEEP_TASK)
    def sweep() -> None:
        """Publish runs whose dispatch was lost between commit and broker."""
        sweeper.sweep(rt)
