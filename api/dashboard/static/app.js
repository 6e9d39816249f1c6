// agentq dashboard: live updates without a framework. No inline scripts (see the CSP).
"use strict";

// Times arrive as RFC 3339 in UTC; show them in the reader's time zone.
function localTimes(root) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    const when = new Date(time.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      time.title = time.getAttribute("datetime");
      time.textContent = when.toLocaleString();
    }
  }
}

// The status strip: workers online, queue depth, runs and failures per minute.
function pollStatus() {
  const strip = document.getElementById("status-strip");
  if (!strip) return;
  const refresh = () => fetch(strip.dataset.src, { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : null))
    .then((data) => {
      if (!data) return;
      for (const cell of strip.querySelectorAll("[data-key]")) {
        const value = data[cell.dataset.key];
        cell.textContent = value === null || value === undefined ? "?" : String(value);
      }
    })
    .catch(() => {});
  refresh();
  setInterval(refresh, 10000);
}

// A part of the page fetched again (its data-src) every `ms`: replaced only when it
// changed, and never under the keyboard focus (it would be lost).
function poll(id, ms) {
  const part = document.getElementById(id);
  if (!part) return;
  let shown = null;
  setInterval(() => {
    if (document.hidden || part.contains(document.activeElement)) return;
    fetch(part.dataset.src).then((r) => (r.ok ? r.text() : null))
      .then((html) => {
        if (html === null || html === shown) return;
        shown = html;
        part.innerHTML = html;
        localTimes(part);
      })
      .catch(() => {});
  }, ms);
}

// The runs list: its rows every 2 s (with the page's filters); the chart of the last hour,
// whose columns are minutes, every 20 s.
function pollRuns() {
  poll("run-rows", 2000);
  poll("runs-chart", 20000);
}

function describeStatus(data) {
  const parts = [`attempt ${data.attempt}`];
  if (data.error) parts.push(`${data.error.type}: ${data.error.message}`);
  if (data.replay) parts.push("replayed");
  if (data.next_attempt_at) parts.push(`next attempt at ${data.next_attempt_at}`);
  if (data.waitpoint) parts.push(`waiting for ${data.waitpoint.name}`);
  if (data.resumed) parts.push(`resumed by ${data.resumed.join(", ")}`);
  return parts.join(" · ");
}

// A run's page: its events arrive over EventSource, which resumes after a dropped
// connection by sending Last-Event-ID; a status event refreshes the panel above, a
// finished step the timeline in it (also redrawn every 5 s while the run goes on, as a
// running attempt's bar reaches "now").
function followRun() {
  const list = document.getElementById("events");
  if (!list) return;
  const state = document.getElementById("stream-state");
  const panel = document.getElementById("run-panel");
  const points = document.getElementById("waitpoints");
  let refreshing = null;
  // The waitpoints are swapped in again only when one of them changed (its data-version):
  // an answer being typed, or one refused with its errors, stays as it is otherwise.
  const refreshPoints = () => {
    if (!points) return;
    fetch(points.dataset.src).then((r) => (r.ok ? r.text() : null))
      .then((html) => {
        if (html === null) return;
        const fresh = document.createElement("template");
        fresh.innerHTML = html.trim();
        const next = fresh.content.firstElementChild;
        if (!next || next.dataset.version === points.dataset.version) return;
        points.dataset.version = next.dataset.version;
        points.replaceChildren(...next.childNodes);
        localTimes(points);
      })
      .catch(() => {});
  };
  let redrawing = null;
  let drawn = null;
  const redraw = () => {
    clearTimeout(redrawing);
    redrawing = setTimeout(() => {
      const timeline = document.getElementById("run-timeline");  // the panel's, as it is now
      if (!timeline) return;
      fetch(timeline.dataset.src).then((r) => (r.ok ? r.text() : null))
        .then((html) => {
          if (html === null || html === drawn) return;
          drawn = html;
          timeline.innerHTML = html;
        })
        .catch(() => {});
    }, 300);
  };
  const refreshPanel = () => {
    clearTimeout(refreshing);
    refreshing = setTimeout(() => {
      fetch(panel.dataset.src).then((r) => (r.ok ? r.text() : null))
        .then((html) => { if (html !== null) { panel.innerHTML = html; localTimes(panel); } })
        .catch(() => {});
      refreshPoints();
    }, 150);
  };
  // Streamed LLM calls (the stream's ?tokens=1): a block per step with its text so far,
  // kept as worker/base/tokens.py says: a frame with i 1 sets it, any other i appends to
  // it, token.reset clears it. Once the step's step.finished arrives its text is final.
  // The text is the model's, so untrusted: it only ever goes in as a text node.
  const live = document.getElementById("live-text");
  const blocks = document.getElementById("token-steps");
  const calls = new Map();  // step -> {block, text (a Text node), pre, note}
  const call = (step) => {
    let found = calls.get(step);
    if (found) return found;
    const block = document.createElement("div");
    block.className = "token-step";
    block.dataset.step = step;
    const head = document.createElement("h3");
    const name = document.createElement("code");
    name.textContent = step;
    const note = document.createElement("span");
    note.className = "muted token-state";
    head.append(name, " ", note);
    const pre = document.createElement("pre");
    pre.className = "token-text";
    const text = document.createTextNode("");
    pre.append(text);
    block.append(head, pre);
    blocks.append(block);
    live.hidden = false;
    found = { block, text, pre, note };
    calls.set(step, found);
    return found;
  };
  const mark = (found, state) => {
    found.block.dataset.state = state;
    found.note.textContent = { writing: "writing…", finished: "finished",
                               stopped: "stopped" }[state];
  };
  const write = (step, change) => {
    const found = call(step);
    // Follow the end of the text unless the reader scrolled up in it.
    const atEnd = found.pre.scrollHeight - found.pre.scrollTop - found.pre.clientHeight < 8;
    change(found.text);
    mark(found, "writing");
    if (atEnd) found.pre.scrollTop = found.pre.scrollHeight;
  };
  const token = (message) => {
    const data = JSON.parse(message.data);
    if (typeof data.step !== "string" || typeof data.text !== "string") return;
    write(data.step, (text) => {
      if (data.i === 1) text.data = data.text;
      else text.appendData(data.text);
    });
  };
  const reset = (message) => {
    const data = JSON.parse(message.data);
    if (typeof data.step === "string") write(data.step, (text) => { text.data = ""; });
  };
  const add = (type, message) => {
    const data = JSON.parse(message.data);
    if (type === "progress" && data.phase === "step.finished") {
      if (calls.has(data.step)) mark(calls.get(data.step), "finished");
      redraw();
    }
    const item = document.createElement("li");
    item.dataset.seq = message.lastEventId;
    item.className = "event-" + type;
    const seq = document.createElement("span");
    seq.textContent = "#" + message.lastEventId;
    const kind = document.createElement("span");
    kind.textContent = type === "status" ? data.status : (data.phase || type);
    kind.className = type === "status" ? "status " + data.status : "phase";
    const text = document.createElement("span");
    text.className = "data";
    text.textContent = data.message || (type === "status" ? describeStatus(data)
                                                          : JSON.stringify(data));
    item.append(seq, kind, text);
    list.append(item);
    return data;
  };
  const source = new EventSource(list.dataset.src);
  const since = Number(list.dataset.lastSeq || 0);  // the run's last event when the page was made
  const ticking = setInterval(() => {
    if (source.readyState === EventSource.CLOSED) clearInterval(ticking);
    else if (!document.hidden) redraw();
  }, 5000);
  source.onopen = () => { if (state) state.textContent = "live"; };
  // A dropped connection is retried by the browser (with Last-Event-ID); a refusal (signed
  // out, key revoked) closes the source for good.
  source.onerror = () => {
    if (!state) return;
    state.textContent = source.readyState === EventSource.CLOSED
      ? "disconnected: reload the page" : "reconnecting…";
  };
  if (live && blocks) {
    source.addEventListener("token", token);
    source.addEventListener("token.reset", reset);
  }
  source.addEventListener("progress", (message) => add("progress", message));
  source.addEventListener("status", (message) => {
    const data = add("status", message);
    refreshPanel();
    const ended = ["succeeded", "failed", "cancelled", "dead_lettered", "expired"];
    // An end older than the page is one a replay went past: the stream stops there and the
    // browser reconnects after it (Last-Event-ID), so the page follows the replay.
    if (ended.includes(data.status) && Number(message.lastEventId) >= since) {
      source.close();  // the stream ends after the terminal event; do not reconnect
      for (const found of calls.values()) {
        if (found.block.dataset.state === "writing") mark(found, "stopped");
      }
      if (state) state.textContent = "finished";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  pollStatus();
  pollRuns();
  followRun();
});
