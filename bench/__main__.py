"""Every benchmark, one table: ``python -m bench [--quick] [--only submit,dispatch,...]``.

Each benchmark starts the servers it needs (embedded Postgres and Redis in a temporary
directory, as the tests do), measures agentq and, where there is one, a baseline built from
the same parts (``bench/baseline/``) in the same run, and adds rows to the table: agentq's
figure, the baseline's, their ratio, and the target with whether it was met.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.report import Figure, table

BENCHMARKS = {  # name -> module with figures(quick) -> list[Figure]
    "throughput": "bench.throughput",  # submit, end to end, one worker process
    "dispatch": "bench.dispatch",
    "streams": "bench.stream",  # also the API's RSS with 1,000 streams
    "notify": "bench.notify",
    "inbound": "bench.inbound",
    "chaos": "bench.chaos",
    "memory": "bench.memory",
}


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return (f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores, "
            f"{memory:.0f} GiB, Python {platform.python_version()}")


def run(name: str, quick: bool) -> list[Figure]:
    """One benchmark's figures; if it breaks, a row saying so (the others still run)."""
    try:
        return list(importlib.import_module(BENCHMARKS[name]).figures(quick))
    except Exception as error:  # reported in the table and on stderr; the others still run
        traceback.print_exc()
        return [Figure(f"{name}: FAILED ({type(error).__name__})", float("nan"), "-",
                       target="== 0")]


def _stop(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does: each benchmark stops the servers it started."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (a few minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
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
