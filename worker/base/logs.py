"""JSON log lines: one object per line, with ``run_id`` wherever a run is concerned."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_QUIET = ("celery.worker.strategy", "celery.app.trace", "kombu", "amqp", "urllib3", "httpx")


def configure_logging(level: str, *, service: str) -> None:
    """Send every log record to stdout as one JSON object per line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service},
            timestamp="time",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
