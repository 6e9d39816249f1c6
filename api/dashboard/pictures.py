"""The dashboard's pictures as geometry: a run's attempts and steps as a waterfall, and a
tenant's runs ended per minute over the last hour as columns.

Plain arithmetic on plain values (no database, no Flask); the templates draw the result as
inline SVG. Every position is an attribute, since the CSP refuses inline styles: across, a
percentage of the picture's width (it stretches to any screen without shrinking its text);
down, pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

ROW_PX = 30  # a waterfall row: its label, then its bar
BAR_PX = 11
AXIS_PX = 24  # the time axis under the rows
MIN_WIDTH = 0.4  # % of the width: the shortest bar drawn, so a 2 ms step still shows
MAX_ROWS = 120  # rows drawn at most; the Attempts and Steps tables list them all
# Ticks' spacing, in seconds: round numbers of milliseconds, seconds, minutes, hours, days.
NICE_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60,
          120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)

# The waterfall's key: (CSS class, what it means, the bars' states it stands for).
LEGEND = (("succeeded", "attempt succeeded", {"succeeded"}),
          ("failed", "failed, timed out or crashed", {"failed", "timed_out", "crashed"}),
          ("cancelled", "cancelled", {"cancelled"}), ("running", "running", {"running"}),
          ("suspended", "waiting", {"suspended"}), ("step", "step", {"step"}),
          ("llm", "LLM call", {"llm"}), ("reused", "reused, not run again", {"reused"}))

MINUTES = 60  # the chart's columns
PLOT_PX = 100  # the tallest column
TOP_PX = 16  # above the plot: its scale's label
GAP = 0.3  # % of the width between columns
MIN_SEGMENT_PX = 1.5  # one run among a thousand still shows
FAILED_LABEL = "failed or dead-lettered"
OTHER_LABEL = "cancelled or expired"


def duration(seconds: float) -> str:
    """``seconds`` as a reader says it: 340 ms, 1.2 s, 45 s, 2 min 5 s, 3 h 10 min."""
    if seconds < 1:
        return f"{round(seconds * 1000)} ms" if seconds > 0 else "0 s"
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + " s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


# A run's waterfall ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """What the waterfall needs of one attempt."""

    attempt: int
    started_at: datetime
    finished_at: datetime | None  # None: still running
    outcome: str | None


@dataclass(frozen=True)
class Step:
    """What the waterfall needs of one stored step (it records its end and its length)."""

    name: str
    attempt: int  # the attempt that ran it
    finished_at: datetime
    duration_ms: int
    usage: Mapping[str, Any] | None = None  # an LLM call's model and tokens

    @property
    def started_at(self) -> datetime:
        return self.finished_at - timedelta(milliseconds=self.duration_ms)


@dataclass(frozen=True)
class Bar:
    """One row of the waterfall: a label above a bar, both placed in % of the width."""

    kind: str  # attempt, step, llm or reused
    state: str  # its CSS class: the attempt's outcome (or running), else its kind
    label: str
    title: str  # the same facts in a sentence: the bar's tooltip, the table's row
    x: float
    width: float
    y: int  # px: the row's top
    label_x: float
    anchor: str  # the label's text-anchor: start, or end when the bar is far right
    starts: str  # from the first attempt's start
    took: str
    bar_px: ClassVar[int] = BAR_PX

    @property
    def bar_y(self) -> int:
        return self.y + ROW_PX - BAR_PX - 4

    @property
    def label_y(self) -> int:
        return self.y + 12


@dataclass(frozen=True)
class Tick:
    x: float
    label: str
    anchor: str


@dataclass(frozen=True)
class Waterfall:
    bars: list[Bar]
    ticks: list[Tick]
    total: str
    summary: str
    hidden: int  # rows past MAX_ROWS, not drawn

    @property
    def axis_y(self) -> int:
        return len(self.bars) * ROW_PX + 4

    @property
    def height(self) -> int:
        return len(self.bars) * ROW_PX + AXIS_PX

    @property
    def legend(self) -> list[tuple[str, str]]:
        """The key to the colours drawn: (CSS class, what it means)."""
        drawn = {bar.state for bar in self.bars}
        return [(css, meaning) for css, meaning, states in LEGEND if states & drawn]


@dataclass(frozen=True)
class _Row:
    kind: str
    state: str
    label: str
    title: str
    start: datetime
    end: datetime


def waterfall(attempts: Sequence[Attempt], steps: Sequence[Step], *,
              now: datetime) -> Waterfall | None:
    """The run's attempts, each followed by the steps it ran or reused; None before its
    first attempt. A running attempt's bar reaches ``now``."""
    if not attempts:
        return None
    rows = [row for attempt in sorted(attempts, key=lambda a: a.attempt)
            for row in _attempt_rows(attempt, steps, now=now)]
    origin = min(row.start for row in rows)
    span_s = max((max(row.end for row in rows) - origin).total_seconds(), 0.001)
    drawn = rows[:MAX_ROWS]
    bars = [_bar(row, i, origin=origin, span_s=span_s) for i, row in enumerate(drawn)]
    counted = sum(1 for row in rows if row.kind != "attempt")
    summary = (f"{_count(len(attempts), 'attempt')} and {_count(counted, 'step')} over "
               f"{duration(span_s)}: " + "; ".join(row.title for row in rows
                                                   if row.kind == "attempt") + ".")
    return Waterfall(bars=bars, ticks=ticks(span_s), total=duration(span_s),
                     summary=summary, hidden=len(rows) - len(drawn))


def _attempt_rows(attempt: Attempt, steps: Sequence[Step], *, now: datetime) -> list[_Row]:
    end = attempt.finished_at or max(now, attempt.started_at)
    outcome = attempt.outcome or "running"
    took = duration((end - attempt.started_at).total_seconds())
    head = _Row("attempt", outcome, f"Attempt {attempt.attempt} · {outcome} · {took}",
                f"Attempt {attempt.attempt}: {outcome}"
                f"{' so far' if attempt.finished_at is None else ''}, {took}",
                attempt.started_at, end)
    reused = [_reused(step, attempt) for step in sorted(steps, key=lambda s: s.started_at)
              if step.attempt < attempt.attempt and step.finished_at <= attempt.started_at]
    ran = [_ran(step) for step in sorted(steps, key=lambda s: s.started_at)
           if step.attempt == attempt.attempt]
    return [head, *reused, *ran]


def _ran(step: Step) -> _Row:
    took = duration(step.duration_ms / 1000)
    usage = step.usage
    if usage is None:
        return _Row("step", "step", f"{step.name} · {took}",
                    f"Step {step.name} (attempt {step.attempt}): {took}",
                    step.started_at, step.finished_at)
    model, tokens_in, tokens_out = (usage.get("model") or "LLM", usage.get("input_tokens", 0),
                                    usage.get("output_tokens", 0))
    return _Row("llm", "llm", f"{step.name} · {model} · {tokens_in} in / {tokens_out} out · "
                              f"{took}",
                f"LLM call {step.name} (attempt {step.attempt}): {model}, {tokens_in} tokens "
                f"in, {tokens_out} out, {took}", step.started_at, step.finished_at)


def _reused(step: Step, attempt: Attempt) -> _Row:
    """A step an earlier attempt stored: this one got its result back, not running it."""
    return _Row("reused", "reused", f"{step.name} · reused from attempt {step.attempt}",
                f"Step {step.name} (attempt {attempt.attempt}): reused from attempt "
                f"{step.attempt}, not run again", attempt.started_at, attempt.started_at)


def _bar(row: _Row, index: int, *, origin: datetime, span_s: float) -> Bar:
    offset_s = (row.start - origin).total_seconds()
    width = max((row.end - row.start).total_seconds() / span_s * 100, MIN_WIDTH)
    x = min(offset_s / span_s * 100, 100 - width)
    far_right = x + width / 2 > 50
    starts = duration(offset_s)
    return Bar(kind=row.kind, state=row.state, label=row.label,
               title=f"{row.title}; started at {starts}", x=round(x, 3),
               width=round(width, 3), y=index * ROW_PX,
               label_x=round(x + width if far_right else x, 3),
               anchor="end" if far_right else "start", starts=starts,
               took=duration((row.end - row.start).total_seconds()))


def ticks(span_s: float) -> list[Tick]:
    """A few round times from 0, none crowding the total at the right end."""
    spacing = next((nice for nice in NICE_S if nice >= span_s / 5),
                   86400 * math.ceil(span_s / 5 / 86400))
    count = math.floor(span_s * 0.8 / spacing)
    marks = [Tick(x=round(i * spacing / span_s * 100, 3), label=duration(i * spacing),
                  anchor="start" if i == 0 else "middle") for i in range(count + 1)]
    return [*marks, Tick(x=100.0, label=duration(span_s), anchor="end")]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# The runs ended per minute ----------------------------------------------------------------

@dataclass(frozen=True)
class Ended:
    """The runs that ended in one minute, by how."""

    succeeded: int = 0
    failed: int = 0  # failed or dead-lettered: what the status strip counts as failures
    other: int = 0  # cancelled or expired

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.other


@dataclass(frozen=True)
class Segment:
    state: str  # succeeded, failed or other
    y: float
    height: float


@dataclass(frozen=True)
class Column:
    minute: datetime
    ago: int  # minutes before the current one
    ended: Ended
    x: float
    width: float
    segments: list[Segment]
    title: str

    @property
    def when(self) -> str:
        return when(self.ago)


@dataclass(frozen=True)
class Chart:
    columns: list[Column]
    scale: int  # the runs a full-height column stands for
    totals: Ended
    summary: str
    top_y: ClassVar[int] = TOP_PX
    plot_px: ClassVar[int] = PLOT_PX
    failed_label: ClassVar[str] = FAILED_LABEL
    other_label: ClassVar[str] = OTHER_LABEL

    @property
    def height(self) -> int:
        return TOP_PX + PLOT_PX + AXIS_PX

    @property
    def base_y(self) -> int:
        return TOP_PX + PLOT_PX

    @property
    def busy(self) -> list[Column]:
        """The minutes in which a run ended."""
        return [column for column in self.columns if column.ended.total]


def per_minute(ended: Mapping[datetime, Ended], *, this_minute: datetime) -> Chart:
    """Columns for the ``MINUTES`` minutes up to ``this_minute`` (the current, unfinished
    one), from the counts of the minutes in which runs ended (keyed by the minute's start)."""
    minutes = [this_minute - timedelta(minutes=ago) for ago in range(MINUTES - 1, -1, -1)]
    counts = [ended.get(minute, Ended()) for minute in minutes]
    scale = _scale(max(count.total for count in counts))
    columns = [_column(minute, count, i, scale=scale)
               for i, (minute, count) in enumerate(zip(minutes, counts, strict=True))]
    totals = Ended(sum(c.succeeded for c in counts), sum(c.failed for c in counts),
                   sum(c.other for c in counts))
    return Chart(columns=columns, scale=scale, totals=totals, summary=_chart_summary(
        totals, max(columns, key=lambda column: column.ended.total)))


def _scale(peak: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above ``peak``."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= peak:
                return step * magnitude
        magnitude *= 10


def _column(minute: datetime, count: Ended, index: int, *, scale: int) -> Column:
    ago = MINUTES - 1 - index
    segments, top = [], float(TOP_PX + PLOT_PX)
    for state, n in (("succeeded", count.succeeded), ("failed", count.failed),
                     ("other", count.other)):
        if n:
            height = max(n / scale * PLOT_PX, MIN_SEGMENT_PX)
            top -= height
            segments.append(Segment(state, round(top, 2), round(height, 2)))
    return Column(minute=minute, ago=ago, ended=count,
                  x=round(index * 100 / MINUTES + GAP / 2, 3),
                  width=round(100 / MINUTES - GAP, 3), segments=segments,
                  title=f"{when(ago)}: {described(count)}")


def when(ago: int) -> str:
    return "This minute (so far)" if ago == 0 else f"{ago} min ago"


def described(count: Ended) -> str:
    if not count.total:
        return "no runs ended"
    parts = [(count.succeeded, "succeeded"), (count.failed, FAILED_LABEL),
             (count.other, OTHER_LABEL)]
    return ", ".join(f"{n} {label}" for n, label in parts if n)


def _chart_summary(totals: Ended, busiest: Column) -> str:
    if not totals.total:
        return "No runs ended in the last hour."
    return (f"In the last hour {_count(totals.total, 'run')} ended: {described(totals)}. "
            f"The busiest minute, {when(busiest.ago).lower()}, had {busiest.ended.total}.")
