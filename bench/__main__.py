"""Every benchmark, one table: ``python -m bench [--quick] [--only submit,dispatch,...]``.

Each benchmark runs in a Python process of its own (nothing one leaves behind, a thread or
a heap, weighs on the next), starts the servers it needs (embedded Postgres and Redis in a
temporary directory, as the tests do), measures agentq and, where there is one, a baseline
built from the same parts (``bench/baseline/``) in the same run, and adds rows to the table:
agentq's figure, the baseline's, their ratio, and the target with whether it was met.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.report import Figure, table

BENCHMARKS = {  # name -> module with figures(quick) -> list[Figure]
    "inflight": "bench.inflight",  # N slow llm.chat runs at once on one worker host
    "throughput": "bench.throughput",  # submit, end to end, one worker process
    "dispatch": "bench.dispatch",
    "streams": "bench.stream",  # also the API's RSS with 1,000 streams
    "notify": "bench.notify",
    "inbound": "bench.inbound",
    "chaos": "bench.chaos",
    "partition": "bench.partition",  # each link to Postgres/Redis cut 30 s, healed
    "memory": "bench.memory",
    "waits": "bench.waits",  # waitpoint completed -> the agent's next line
    "tokens": "bench.tokens",  # LLM chunk written -> SSE client, 100 streams
    "claims": "bench.claims",  # runs started/s with 1,000 concurrency keys vs none
    "batch": "bench.batch",  # 1,000 runs in one POST /v1/runs/batch vs 1,000 POSTs
    "fanout": "bench.fanout",  # ctx.map over 1,000 children, a batch of 1,000: vs 1,000 POSTs
    "retention": "bench.retention",  # submit p99 while 1,000,000 old events are purged
}


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return (f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores, "
            f"{memory:.0f} GiB, Python {platform.python_version()}")


def run(name: str, quick: bool) -> list[Figure]:
    """One benchmark's figures, measured in a child process; if it breaks, a row saying so
    (the others still run)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        # A session of its own: Ctrl-C reaches only this process, which passes it on once.
        child = subprocess.Popen([sys.executable, "-m", "bench", "--child", name, "--out",
                                  out.name, *(["--quick"] if quick else [])],
                                 start_new_session=True)
        try:
            code = child.wait(timeout=1800)
        except BaseException:  # Ctrl-C, SIGTERM or the timeout: the child stops its servers
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
            raise
        rows = json.loads(Path(out.name).read_text() or "[]")
    if code != 0 or not rows:
        return [_failed(name, f"exit {code}")]
    return [Figure(**row) for row in rows]


def measure(name: str, quick: bool, out: Path) -> int:
    """In the child: one benchmark's figures, written to ``out`` as JSON."""
    try:
        figures = list(importlib.import_module(BENCHMARKS[name]).figures(quick))
    except Exception as error:  # reported in the table and on stderr
        traceback.print_exc()
        figures = [_failed(name, type(error).__name__)]
    out.write_text(json.dumps([dataclasses.asdict(figure) for figure in figures]))
    return 0


def _failed(name: str, why: str) -> Figure:
    return Figure(f"{name}: FAILED ({why})", float("nan"), "-", target="== 0")


def _stop(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does: each benchmark stops the servers it started.
    Later signals are ignored, so that a second one cannot cut that clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (a few minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    parser.add_argument("--child", choices=BENCHMARKS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return measure(args.child, args.quick, args.out)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(BENCHMARKS)}")
    figures: list[Figure] = []
    began = time.monotonic()
    for name in chosen:
        started = time.monotonic()
        print(f"running {name}…", file=sys.stderr, flush=True)
        figures += run(name, args.quick)
        print(f"  {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"agentq benchmarks{' (--quick)' if args.quick else ''} on {machine()}, "
          f"{time.monotonic() - began:.0f} s")
    print(table(figures))
    missed = [figure.name for figure in figures if figure.met is False]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
