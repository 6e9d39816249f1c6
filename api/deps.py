"""What views reach for: the runtime and the authenticated caller."""

from __future__ import annotations

from flask import current_app, g

from worker.access.keys import Principal
from worker.base.runtime import Runtime


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["agentq"]
    return rt


def principal() -> Principal:
    caller: Principal = g.principal
    return caller
