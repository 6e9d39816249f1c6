"""The Celery app of ``celery -A worker worker|beat|flower``, built from the environment.

Importing this module validates the settings: a worker with a missing or malformed
``DATABASE_URL`` / ``REDIS_URL`` stops at once with a message naming the variable.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import signals
from celery.concurrency.thread import TaskPool as ThreadsPool

from worker.app import build_runtime
from worker.base import tracing
from worker.base.errors import ConfigurationError
from worker.base.logs import configure_logging
from worker.base.settings import load_settings
from worker.execution.engine import hand_off_runs
from worker.execution.shutdown import GracefulShutdown

try:
    runtime = build_runtime(load_settings())
except ConfigurationError as error:
    sys.exit(f"agentq: {error}")

app = runtime.celery
if tracing.setup(runtime.settings, service="agentq-worker"):
    tracing.instrument_clients()
shutdown = GracefulShutdown(runtime)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(runtime.settings.log_level, service="celery")


@signals.worker_process_init.connect
def _reset_connections(**_: Any) -> None:
    # Each pool child opens its own connections; never share sockets across fork().
    runtime.db.dispose()


@signals.worker_init.connect
def _pool(sender: Any, **_: Any) -> None:
    # A threads pool's tasks hand each run to the engine; a prefork child runs it to its end.
    if isinstance(sender.pool_cls, type) and issubclass(sender.pool_cls, ThreadsPool):
        hand_off_runs()


@signals.worker_ready.connect
def _ready(sender: Any, **_: Any) -> None:
    shutdown.ready(sender)


@signals.worker_shutting_down.connect
def _shutting_down(how: str = "Warm", **_: Any) -> None:
    shutdown.begin(how)


@signals.worker_shutdown.connect
def _shut_down(**_: Any) -> None:
    shutdown.end()
