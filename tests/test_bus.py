"""The API process's hub: one pub/sub connection that hears every watched run."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from tests.conftest import Services
from worker.base.bus import Bus, Hub
from worker.base.models import new_id
from worker.runs.events import Event


def test_watchers_arriving_at_once_all_hear_their_runs(services: Services) -> None:
    """Many streams opening together on a fresh hub: every channel must be subscribed on
    the one connection the hub reads (a second connection's messages are never read)."""
    hub, bus = Hub(services.redis_url, 5.0), Bus(services.redis_url)
    runs = [new_id("run") for _ in range(40)]
    start, heard = threading.Barrier(len(runs)), dict.fromkeys(runs, False)

    def watch(run_id: str) -> None:
        start.wait(timeout=10)
        with hub.watch(run_id) as watch:
            bus.announce([Event(run_id, 2, "progress", {}, datetime.now(UTC))])
            item = watch.next(timeout=5)
            heard[run_id] = isinstance(item, Event) and item.seq == 2

    threads = [threading.Thread(target=watch, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [run_id for run_id, ok in heard.items() if not ok] == []


def test_a_bus_makes_one_hub_however_many_ask_at_once(services: Services) -> None:
    bus = Bus(services.redis_url)
    start, hubs = threading.Barrier(20), []

    def ask() -> None:
        start.wait(timeout=10)
        hubs.append(bus.hub)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len({id(hub) for hub in hubs}) == 1
