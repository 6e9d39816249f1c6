"""Real processes for tests: Celery workers and an API server, started, waited on, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agentq.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def holds(check: Callable[[], object], *, seconds: float, interval: float = 0.05,
          what: str = "condition") -> None:
    """Check that ``check`` stays truthy for ``seconds``, failing the moment it does not:
    for what must not happen (a second delivery, a second attempt) where nothing marks
    that it never will."""
    deadline = time.monotonic() + seconds
    while True:
        assert check(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


class Process:
    """A child process in its own session, its output in a log file."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.pid, signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it if it is still there after ``timeout``."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def restart(self, timeout: float = 60.0) -> None:
        """What a deploy does: SIGTERM to the main process only, wait for it, start again."""
        assert self.popen is not None
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self.start()


class Worker(Process):
    """``celery -A worker worker`` as a real process, optionally with beat (-B).

    As the Procfile's ``worker`` by default: Celery's threads pool handing each run to the
    engine, which holds ``concurrency`` runs at once (AGENTQ_WORKER_SLOTS). With a ``pool``
    named (``prefork``, as the Procfile's ``cpu``), ``concurrency`` is Celery's own."""

    def __init__(self, *, env: dict[str, str], log: Path, name: str, concurrency: int = 2,
                 beat: bool = False, queues: str | None = None, pool: str | None = None,
                 app: str = "worker") -> None:
        if pool is None and app == "worker":
            pool, env = "threads", {**env, "AGENTQ_WORKER_SLOTS": str(concurrency)}
            concurrency = 2  # the threads that hand runs over
        args = [str(BIN / "celery"), "-A", app, "worker", "--loglevel", "INFO",
                "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
                "--without-mingle", "--without-gossip"]
        if beat:
            args += ["--beat", "--schedule", str(log.with_suffix(".beat"))]
        if queues:
            args += ["--queues", queues]
        if pool:
            args += ["--pool", pool]
        super().__init__(args, env=env, log=log)
        self.name = name

    def wait_ready(self, celery_app: Any, timeout: float = 60.0) -> None:
        """Wait until this worker answers a ping (so it consumes its queues)."""

        def answered() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited:\n{self.output()[-3000:]}")
            replies = celery_app.control.ping(timeout=0.5)
            return any(name.startswith(f"{self.name}@") for reply in replies for name in reply)

        wait_for(answered, timeout=timeout, interval=0.2, what=f"worker {self.name} to answer")


class ApiServer(Process):
    """The API under gunicorn (gevent), as in production, on a free port."""

    def __init__(self, *, env: dict[str, str], log: Path,
                 extra_args: tuple[str, ...] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        # The API refuses to start without a dashboard secret; a test's own env may set one.
        env = {"AGENTQ_SECRET_KEY": "harness-only-dashboard-secret-0123456789", **env}
        args = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--worker-class",
                "gevent", "--workers", "1", "--graceful-timeout", "5", *extra_args,
                "api:create_app()"]
        super().__init__(args, env=env, log=log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"API server exited:\n{self.output()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=timeout, interval=0.1, what="the API server")


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse an SSE stream into messages: {id, event, data} or {comment} or {retry}."""
    message: dict[str, str] = {}
    for line in lines:
        if line == "":
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            message[field] = value.removeprefix(" ")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A real HTTP server on loopback that records what it is sent and answers as told.

    ``script(path, [500, 500, 200])`` makes the next requests to ``path`` get those
    statuses in turn (then 200); ``slow(path, seconds)`` delays its answers.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._scripts: dict[str, list[int | tuple[int, dict[str, str]]]] = {}
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in
                                                                  self.headers.items()},
                                                      body, time.time()))
                    script = receiver._scripts.get(self.path)
                    answer = script.pop(0) if script else 200
                time.sleep(receiver._delays.get(self.path, 0))
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, path: str, answers: list[int | tuple[int, dict[str, str]]]) -> None:
        with self._lock:
            self._scripts[path] = list(answers)

    def slow(self, path: str, seconds: float) -> None:
        self._delays[path] = seconds

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [item for item in self.received if item.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class LLMCall:
    prompt: str
    at: float
    authorization: str | None
    body: dict[str, Any]


class FakeLLM:
    """An OpenAI-compatible chat completions server on loopback, for tests without internet.

    It answers ``POST /v1/chat/completions`` with ``echo: <last message>`` and usage
    ``{prompt_tokens: 10, completion_tokens: 5}``. ``script(prompt, [429, (503, headers)])``
    makes the next calls with that last message get those answers first; ``hold(prompt)``
    makes the first such call wait until ``release()`` (a call in flight when a worker dies).

    A ``stream: true`` request gets the answer as OpenAI streams it: Server-Sent Events, one
    word per chunk every ``STREAM_DELAY_S`` (``pace(prompt, seconds)`` changes it), the
    usage in a last chunk, then ``[DONE]``. ``pause(prompt, after=n)`` stops the next such
    stream after n chunks until ``resume(prompt)``; a scripted ``"cut"`` answer closes the
    connection after two chunks (a stream that breaks midway).
    """

    STREAM_DELAY_S = 0.02

    INPUT_TOKENS, OUTPUT_TOKENS = 10, 5

    def __init__(self) -> None:
        self.calls: list[LLMCall] = []
        self._scripts: dict[str, list[int | str | tuple[int, dict[str, str]]]] = {}
        self._held: dict[str, threading.Event] = {}
        self._paces: dict[str, float] = {}
        self._pauses: dict[str, tuple[int, threading.Event]] = {}
        self.chunks_sent: dict[str, int] = {}
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                prompt = str(body["messages"][-1].get("content"))
                with fake._lock:
                    fake.calls.append(LLMCall(prompt, time.time(),
                                              self.headers.get("authorization"), body))
                    script = fake._scripts.get(prompt)
                    answer = script.pop(0) if script else 200
                    gate = fake._held.pop(prompt, None)
                if gate is not None:
                    gate.wait(timeout=60)
                if body.get("stream") and (answer == 200 or answer == "cut"):
                    self._stream(body, prompt, cut=answer == "cut")
                    return
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                assert isinstance(status, int)
                if status == 200:
                    payload = {"id": "chatcmpl-test", "object": "chat.completion",
                               "model": body.get("model"),
                               "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                   "role": "assistant", "content": f"echo: {prompt}"}}],
                               "usage": {"prompt_tokens": fake.INPUT_TOKENS,
                                         "completion_tokens": fake.OUTPUT_TOKENS,
                                         "total_tokens": fake.INPUT_TOKENS + fake.OUTPUT_TOKENS}}
                else:
                    payload = {"error": {"message": f"scripted {status}"}}
                encoded = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(encoded)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the caller died while it was held
                    self.wfile.write(encoded)

            def _stream(self, body: dict[str, Any], prompt: str, *, cut: bool) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()

                def send(data: Any) -> None:
                    line = "data: " + (data if isinstance(data, str) else json.dumps(data))
                    encoded = (line + "\n\n").encode()
                    self.wfile.write(f"{len(encoded):x}\r\n".encode() + encoded + b"\r\n")
                    self.wfile.flush()

                def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                    return {"id": "chatcmpl-test", "object": "chat.completion.chunk",
                            "model": body.get("model"), "choices": [
                                {"index": 0, "delta": delta, "finish_reason": finish}]}

                with fake._lock:
                    delay = fake._paces.get(prompt, fake.STREAM_DELAY_S)
                    pause = fake._pauses.get(prompt)
                words = re.findall(r"\S+\s*", f"echo: {prompt}")
                try:
                    send(chunk({"role": "assistant", "content": ""}))
                    for number, word in enumerate(words, 1):
                        if cut and number > 2:
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if pause is not None and number == pause[0] + 1:
                            pause[1].wait(timeout=60)
                        time.sleep(delay)
                        send(chunk({"content": word}))
                        with fake._lock:
                            fake.chunks_sent[prompt] = fake.chunks_sent.get(prompt, 0) + 1
                    send(chunk({}, "stop"))
                    if (body.get("stream_options") or {}).get("include_usage"):
                        send({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                              "model": body.get("model"), "choices": [], "usage": {
                                  "prompt_tokens": fake.INPUT_TOKENS,
                                  "completion_tokens": fake.OUTPUT_TOKENS,
                                  "total_tokens": fake.INPUT_TOKENS + fake.OUTPUT_TOKENS}})
                    send("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the caller went away
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, prompt: str,
               answers: list[int | str | tuple[int, dict[str, str]]]) -> None:
        with self._lock:
            self._scripts[prompt] = list(answers)

    def pace(self, prompt: str, seconds: float) -> None:
        with self._lock:
            self._paces[prompt] = seconds

    def pause(self, prompt: str, *, after: int) -> None:
        with self._lock:
            self._pauses[prompt] = (after, threading.Event())
            self._gates.append(self._pauses[prompt][1])

    def resume(self, prompt: str) -> None:
        with self._lock:
            _, gate = self._pauses.pop(prompt)
        gate.set()

    def hold(self, prompt: str) -> None:
        with self._lock:
            self._held[prompt] = threading.Event()
            self._gates.append(self._held[prompt])

    def release(self) -> None:
        for gate in self._gates:
            gate.set()

    def calls_for(self, prompt: str) -> list[LLMCall]:
        with self._lock:
            return [call for call in self.calls if call.prompt == prompt]

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
