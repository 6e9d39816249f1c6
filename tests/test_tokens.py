"""Token streaming: a streamed LLM call's text reaches SSE and WebSocket clients as it is
written, continues exactly across a reconnect, starts again after a retry, and is stored
once, whole."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from simple_websocket import Client
from sqlalchemy import event as sql_event
from sqlalchemy import func, select

from tests.conftest import ApiClient, Tenant
from tests.harness import ApiServer, FakeLLM, sse_events, wait_for
from tests.test_metrics import scrape
from tests.test_websocket import Socket, ws_url
from worker.base.bus import Bus
from worker.base.models import RunEvent
from worker.base.runtime import Runtime
from worker.base.tokens import RESET, TOKEN, Token, Tracker, partial
from worker.runs.events import Event
from worker.runs.follow import follow

pytestmark = pytest.mark.usefixtures("worker")

TERMINAL = {"succeeded", "failed", "cancelled", "dead_lettered"}


@pytest.fixture
def http(api_server: ApiServer, tenant: Tenant) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {tenant.key}"}
    with httpx.Client(base_url=api_server.url, headers=headers, timeout=60) as client:
        yield client


def prompt(words: int = 12) -> str:
    """A prompt unique to the test, of ``words`` words (the fake answers "echo: " + it)."""
    return " ".join([uuid.uuid4().hex[:8]] + [f"w{n}" for n in range(1, words)])


class Text:
    """A client's view of the calls' text, kept as the contract says: a token frame with
    i 1 sets the step's text, any other appends; token.reset clears it."""

    def __init__(self) -> None:
        self.steps: dict[str, str] = {}
        self.frames: list[tuple[str, dict[str, Any]]] = []

    def add(self, kind: str, data: dict[str, Any]) -> None:
        self.frames.append((kind, data))
        if kind == "token.reset":
            self.steps[data["step"]] = ""
        elif data["i"] == 1:
            self.steps[data["step"]] = data["text"]
        else:
            self.steps[data["step"]] = self.steps.get(data["step"], "") + data["text"]


def read_sse(http: httpx.Client, run_id: str, text: Text, *, after: int = 0,
             stop: Any = None, listening: Any = None) -> tuple[list[dict[str, Any]], bool]:
    """Read the run's SSE stream with tokens into ``text``; return its events, and whether
    it ended with the run (False if ``stop(text)`` said to hang up first)."""
    got: list[dict[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    if after:
        headers["Last-Event-ID"] = str(after)
    with http.stream("GET", f"/v1/runs/{run_id}/events?tokens=1", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for message in sse_events(response.iter_lines()):
            kind = message.get("event")
            if kind in ("token", "token.reset"):
                assert "id" not in message, message  # token frames never take a seq
                text.add(kind, json.loads(message["data"]))
                if stop is not None and stop(text):
                    return got, False
            elif kind is not None:
                got.append({"id": int(message["id"]), "event": kind,
                            "data": json.loads(message["data"])})
                if listening is not None and len(got) == 1:
                    listening()  # the first event comes once the stream is subscribed
    return got, True


def test_tokens_reach_the_client_before_the_run_ends_and_add_up_to_the_answer(
    http: httpx.Client, api: ApiClient, runtime: Runtime, app: Flask, fake_llm: FakeLLM
) -> None:
    ask = prompt(20)
    fake_llm.pause(ask, after=0)  # held until the client is listening
    run = api.submit("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                  "stream": True})
    text = Text()
    wait_for(lambda: len(fake_llm.calls_for(ask)) == 1, what="the call")
    threading.Timer(1.0, fake_llm.resume, args=(ask,)).start()
    got, ended = read_sse(http, run["id"], text)
    assert ended and got[-1]["data"]["status"] == "succeeded"
    done = api.run(run["id"])
    assert done["result"]["content"] == f"echo: {ask}"
    assert text.steps == {"chat": f"echo: {ask}"}
    # one frame per chunk the endpoint wrote (the client was there from the start)
    assert len([f for f in text.frames if f[0] == "token"]) == 21
    # the usage came in the stream's last chunk, and is stored with the step as ever
    assert done["result"]["usage"] == {"input_tokens": 10, "output_tokens": 5}
    # no token is a row in Postgres: the run's events are its statuses and steps
    with runtime.db.transaction() as session:
        rows = session.scalar(select(func.count()).select_from(RunEvent)
                              .where(RunEvent.run_id == run["id"]))
    assert rows == len(got)
    # the time to the first piece of text is measured, per try
    counted = wait_for(lambda: scrape(app).get(
        "agentq_llm_time_to_first_token_seconds_count"), what="the metric")
    assert sum(counted.values()) >= 1


def test_a_plain_def_agent_streams_each_call_and_frames_arrive_before_the_end(
    http: httpx.Client, api: ApiClient, fake_llm: FakeLLM
) -> None:
    first, second = prompt(6), prompt(6)
    fake_llm.pause(second, after=3)  # the run cannot end until the client has seen text
    run = api.submit("test.stream", {"prompts": [first, second]})
    text = Text()

    def watch() -> None:
        read_sse(http, run["id"], text)

    reader = threading.Thread(target=watch)
    reader.start()
    wait_for(lambda: text.steps.get("llm:2", "").count(" ") >= 3, what="text of llm:2")
    assert api.run(run["id"])["status"] == "running"
    fake_llm.resume(second)
    reader.join(timeout=60)
    assert text.steps == {"llm:1": f"echo: {first}", "llm:2": f"echo: {second}"}
    result = api.wait(run["id"])["result"]
    assert [a["content"] for a in result["answers"]] == [f"echo: {first}", f"echo: {second}"]


def test_a_reconnect_mid_call_loses_and_repeats_nothing(
    http: httpx.Client, api: ApiClient, fake_llm: FakeLLM
) -> None:
    ask = prompt(16)
    fake_llm.pause(ask, after=8)
    run = api.submit("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                  "stream": True})
    text = Text()
    got, ended = read_sse(http, run["id"], text,
                          stop=lambda t: t.steps.get("chat", "").count(" ") >= 4)
    assert not ended
    before = len(text.frames)
    # away while more is written: chunks 5 to 8 go by with no one listening
    wait_for(lambda: fake_llm.chunks_sent.get(ask, 0) >= 8, what="8 chunks written")
    threading.Timer(0.5, fake_llm.resume, args=(ask,)).start()
    rest, ended = read_sse(http, run["id"], text, after=got[-1]["id"])
    assert ended
    # the reconnect began with the text so far in one frame (i 1), then went on live
    catch_up = text.frames[before]
    assert catch_up[0] == "token" and catch_up[1]["i"] == 1
    assert catch_up[1]["text"].startswith("echo: ")
    assert text.steps["chat"] == f"echo: {ask}"
    assert [e["id"] for e in got + rest] == list(range(1, len(got) + len(rest) + 1))


def test_a_retried_call_sends_token_reset_and_the_text_starts_again(
    http: httpx.Client, api: ApiClient, fake_llm: FakeLLM
) -> None:
    ask = prompt(10)
    fake_llm.script(ask, ["cut"])  # two chunks, then the connection breaks
    fake_llm.pause(ask, after=0)  # held until the client listens
    run = api.submit("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                  "stream": True})
    text = Text()
    wait_for(lambda: len(fake_llm.calls_for(ask)) == 1, what="the first try")
    threading.Timer(0.5, fake_llm.resume, args=(ask,)).start()
    got, ended = read_sse(http, run["id"], text)
    assert ended and got[-1]["data"]["status"] == "succeeded"
    kinds = [kind for kind, _ in text.frames]
    assert "token.reset" in kinds
    reset = kinds.index("token.reset")
    assert kinds[:reset] == ["token", "token"]  # the broken try's two chunks
    assert text.steps["chat"] == f"echo: {ask}"
    assert len(fake_llm.calls_for(ask)) == 2


def test_websocket_subscribers_get_the_tokens_too(
    api_server: ApiServer, tenant: Tenant, api: ApiClient, fake_llm: FakeLLM
) -> None:
    ask = prompt(8)
    fake_llm.pause(ask, after=0)
    client = Client.connect(ws_url(api_server), headers={"Authorization": f"Bearer {tenant.key}"})
    ws = Socket(client)
    try:
        run = api.submit("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                      "stream": True})
        ws.send({"type": "subscribe", "run_id": run["id"], "tokens": True})
        wait_for(lambda: len(fake_llm.calls_for(ask)) == 1, what="the call")
        fake_llm.resume(ask)
        text = Text()
        statuses = []
        while not TERMINAL & set(statuses):
            frame = ws.receive(timeout=30)
            if frame["type"] in ("token", "token.reset"):
                assert frame["run_id"] == run["id"]
                text.add(frame["type"], frame)
            elif frame["type"] == "event" and frame["event"] == "status":
                statuses.append(frame["data"]["status"])
                if frame["data"]["status"] == "succeeded":
                    assert text.steps["chat"] == f"echo: {ask}"  # all before the end
        assert statuses[-1] == "succeeded"
    finally:
        client.close()


def test_a_stream_without_tokens_has_none(http: httpx.Client, api: ApiClient) -> None:
    run = api.submit("llm.chat", {"messages": [{"role": "user", "content": prompt(4)}],
                                  "stream": True})
    with http.stream("GET", f"/v1/runs/{run['id']}/events",
                     headers={"Accept": "text/event-stream"}) as response:
        kinds = [m.get("event") for m in sse_events(response.iter_lines())]
    assert "token" not in kinds and kinds[-1] == "status"


def test_a_stream_that_reads_the_log_as_the_run_ends_still_sends_the_end(
    api: ApiClient, runtime: Runtime, fake_llm: FakeLLM
) -> None:
    # Given a streamed call under way, and a stream that resumes after its step.started
    ask = prompt(8)
    fake_llm.pause(ask, after=3)
    run = api.submit("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                  "stream": True})

    def started() -> int:
        items = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
        phases = [item["data"].get("phase") for item in items]
        return items[-1]["seq"] if "step.started" in phases else 0

    after = wait_for(started, what="step.started")
    wait_for(lambda: fake_llm.chunks_sent.get(ask, 0) >= 3, what="3 chunks written")
    # When the run ends (its step.finished and last status committed) between the stream's
    # read of the log (nothing new yet) and its look at the run's status (ended)
    ended = threading.Event()

    def end_the_run_first(conn: Any, cursor: Any, statement: str, parameters: Any,
                          *_: Any) -> None:
        if (not ended.is_set() and statement.lstrip().startswith("SELECT runs.status")
                and run["id"] in dict(parameters or {}).values()):
            ended.set()
            fake_llm.resume(ask)
            api.wait(run["id"])

    sql_event.listen(runtime.db.engine, "before_cursor_execute", end_the_run_first)
    try:
        got = [item for item in follow(runtime, run_id=run["id"], after=after, tick_s=5,
                                       max_s=30, tokens=True) if isinstance(item, Event)]
    finally:
        sql_event.remove(runtime.db.engine, "before_cursor_execute", end_the_run_first)
    # Then the stream still sends the step's end and the run's, and ends after them
    assert ended.is_set()
    assert [e.data.get("phase") or e.data.get("status") for e in got] == [
        "step.finished", "succeeded"]
    assert [e.seq for e in got] == [after + 1, after + 2]


def test_streams_that_all_read_a_calls_list_at_once_all_get_it(runtime: Runtime) -> None:
    # Given a call's list in Redis, and Redis holding every command for half a second, as
    # a busy one may, while 150 streams of one process read the list (its step has ended)
    run_id = f"run_{uuid.uuid4().hex}"
    bus = Bus(runtime.settings.redis_url, timeout_s=5)
    bus.call_started(Token(run_id, "chat", RESET, g=1001), announce=False)
    bus.token(Token(run_id, "chat", TOKEN, 1, "hello", 1001))
    pauser = redis.Redis.from_url(runtime.settings.redis_url)
    pauser.client_pause(500)
    # When they read it at once (more of them than the client's pool has connections)
    with pauser, ThreadPoolExecutor(max_workers=150) as pool:
        calls = list(pool.map(lambda _: bus.call(run_id, "chat"), range(150)))
    # Then each gets the text: a busy pool makes a reader wait, never fail
    assert [call.text_after(0) if call else None for call in calls] == ["hello"] * 150


def test_two_hundred_clients_watch_one_runs_tokens(
    api_server: ApiServer, tenant: Tenant, api: ApiClient, fake_llm: FakeLLM
) -> None:
    ask = prompt(10)
    fake_llm.pause(ask, after=0)
    run = api.submit("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                  "stream": True})
    texts = [Text() for _ in range(200)]
    connected = threading.Semaphore(0)

    events: dict[int, list[Any]] = {}
    connections: dict[int, int] = {}

    def watch(text: Text) -> bool:
        got, ended = read_sse(http, run["id"], text, listening=connected.release)
        connections[id(text)] = 1
        while not got or got[-1]["data"].get("status") not in TERMINAL:
            # cut off before the end: reconnect after the last event, as EventSource does
            more, ended = read_sse(http, run["id"], text, after=got[-1]["id"] if got else 0)
            connections[id(text)] += 1
            got += more
        events[id(text)] = [(e["id"], e["data"].get("phase") or e["data"].get("status"))
                            for e in got]
        return ended

    http = httpx.Client(base_url=api_server.url, timeout=60,
                        headers={"Authorization": f"Bearer {tenant.key}"},
                        limits=httpx.Limits(max_connections=250))
    with http, ThreadPoolExecutor(max_workers=200) as pool:
        futures = [pool.submit(watch, text) for text in texts]
        for _ in texts:
            assert connected.acquire(timeout=60)
        wait_for(lambda: len(fake_llm.calls_for(ask)) == 1, what="the call")
        fake_llm.resume(ask)  # every client is listening
        assert all(future.result(timeout=120) for future in futures)
    wrong = [(text.steps, events.get(id(text)), text.frames) for text in texts
             if text.steps != {"chat": f"echo: {ask}"}]
    assert not wrong, (len(wrong), wrong[:2])
    # no stream ended before the run did: each client needed the one connection
    cut = [events.get(id(text)) for text in texts if connections.get(id(text)) != 1]
    assert not cut, (len(cut), cut[:2])


def test_the_tracker_sends_each_piece_once_and_fills_gaps_from_the_calls_lists() -> None:
    def token(i: int, text: str, g: int = 1001) -> Token:
        return Token("run_x", "chat", TOKEN, i, text, g)

    tracker, text = Tracker("run_x"), Text()

    def send(frames: list[Token] | None) -> None:
        assert frames is not None
        for frame in frames:
            text.add("token.reset" if frame.kind == RESET else "token", frame.frame())

    # joined mid-call: the list says 3 pieces so far; the same 3rd piece then heard live
    listed = partial([Token("run_x", "chat", RESET, g=1001), token(1, "a"), token(2, "b"),
                      token(3, "c")])
    assert listed is not None and listed.text_after(0) == "abc"
    send(tracker.catch_up({"chat": listed}))
    send(tracker.live(token(3, "c")))  # already sent: dropped
    send(tracker.live(token(4, "d")))
    assert text.steps == {"chat": "abcd"}
    assert tracker.live(token(6, "f")) is None  # the 5th was missed: catch up
    listed.chunks += [(4, "d"), (5, "e"), (6, "f")]
    send(tracker.catch_up({"chat": listed}))
    assert text.steps == {"chat": "abcdef"}
    # a new try: the reset is heard, the text starts again
    send(tracker.live(Token("run_x", "chat", RESET, g=1002)))
    send(tracker.live(token(1, "x", g=1002)))
    assert text.steps == {"chat": "x"}
    # a reset missed (a piece of a try not known): caught up from the list, from i 1
    assert tracker.live(token(2, "y", g=2001)) is None
    send(tracker.catch_up({"chat": partial([Token("run_x", "chat", RESET, g=2001),
                                            token(1, "w", 2001), token(2, "y", 2001)])}))
    assert text.steps == {"chat": "wy"}
    # a call that failed, made again under its name (a new g, no reset heard): from i 1
    tracker.ended("chat", finished=False)
    send(tracker.live(token(1, "n", g=3001)))
    assert text.steps == {"chat": "n"}
    # a piece lost on its way, and not in the list either: passed over, no stall
    assert tracker.live(token(3, "p", g=3001)) is None
    send(tracker.catch_up({"chat": partial([token(1, "n", 3001)])}))
    send(tracker.live(token(3, "p", g=3001), caught_up=True))
    send(tracker.live(token(4, "q", g=3001)))
    assert text.steps == {"chat": "npq"}
    # the call ended: nothing more is sent for it, not even from a late list
    tracker.ended("chat", finished=True)
    assert tracker.catch_up({"chat": partial([token(1, "n", 3001)])}) == []
    assert tracker.live(token(5, "r", g=3001)) == []
