"""``make dev``: the whole platform from one command, a run to the end, Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from agentq.embedded import free_port
from tests.harness import BIN, ROOT, wait_for

pytestmark = pytest.mark.slow


class DevProcess:
    """``make dev`` in its own process group, as a terminal would run it."""

    def __init__(self, data_dir: Path) -> None:
        self.port, self.flower_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL"} and
               not k.startswith("AGENTQ_")}
        env.update(AGENTQ_DATA_DIR=str(data_dir), PORT=str(self.port),
                   FLOWER_PORT=str(self.flower_port), PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(["make", "dev"], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def key(self) -> str:
        found = wait_for(lambda: re.search(r"API key\s+(aq_\S+)", self.output), timeout=120,
                         what="the API key in make dev's output")
        return found.group(1)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.popen.pid).children(recursive=True)

    def interrupt(self) -> int:
        os.killpg(self.popen.pid, signal.SIGINT)  # what Ctrl-C does
        return self.popen.wait(timeout=60)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "agentq-data"


def _session(dev: DevProcess) -> tuple[httpx.Client, str]:
    key = dev.key()
    client = httpx.Client(base_url=f"http://127.0.0.1:{dev.port}", timeout=10,
                          headers={"Authorization": f"Bearer {key}"})

    def healthy() -> bool:
        try:
            return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=120, interval=0.5, what=f"/health 200\n{dev.output[-3000:]}")
    return client, key


def test_make_dev_runs_a_research_run_and_stops_everything_on_ctrl_c(data_dir: Path) -> None:
    dev = DevProcess(data_dir)
    try:
        client, _ = _session(dev)
        # Flower is up too
        assert httpx.get(f"http://127.0.0.1:{dev.flower_port}/", timeout=10).status_code == 200
        run = client.post("/v1/runs", json={"agent": "demo.research",
                                            "input": {"question": "Why is the sky blue?",
                                                      "phase_s": 0.2}}).json()
        done = wait_for(lambda: (r := client.get(f"/v1/runs/{run['id']}").json())["status"]
                        in {"succeeded", "failed"} and r, timeout=60, what="the run to end")
        assert done["status"] == "succeeded"
        assert done["result"]["citations"]
        # The usual tools reach it with the URLs it keeps in .agentq/env
        urls = dict(line.split("=", 1) for line in (data_dir / "env").read_text().split())
        ping = subprocess.run([str(BIN / "celery"), "-A", "worker", "inspect", "ping"],
                              cwd=ROOT, env={"PATH": str(BIN), **urls}, capture_output=True,
                              text=True, timeout=60)
        assert ping.returncode == 0 and "dev-worker@" in ping.stdout, ping.stdout + ping.stderr
        processes = dev.descendants()
        assert len(processes) >= 6
    finally:
        code = dev.interrupt()
    assert code in {0, 130, -signal.SIGINT}, dev.output[-3000:]
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in processes), timeout=30, what="every process to stop")
    assert not (data_dir / "postgres" / "data" / "postmaster.pid").exists()

    # The next `make dev` finds the run from before, and the same key still works
    again = DevProcess(data_dir)
    try:
        client, _ = _session(again)
        assert client.get(f"/v1/runs/{run['id']}").json()["status"] == "succeeded"
    finally:
        again.interrupt()
