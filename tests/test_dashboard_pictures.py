"""The dashboard's pictures as arithmetic: where a run's bars go on its timeline, and the
columns of the runs ended per minute. Pure functions: no database, no browser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.dashboard import pictures
from api.dashboard.pictures import Attempt, Ended, Step

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_retried_run_draws_each_attempt_then_its_steps_where_and_as_long_as_they_ran() -> None:
    # Given attempt 1 (0-4 s, failed) that stored step "a" (1-2 s), and attempt 2 (6-10 s)
    # that got "a" back and ran the LLM call "b" (7-9 s)
    tried = [Attempt(2, at(6), at(10), "succeeded"), Attempt(1, at(0), at(4), "failed")]
    stored = [Step("a", 1, at(2), 1000),
              Step("b", 2, at(9), 2000, {"model": "m-1", "input_tokens": 10,
                                         "output_tokens": 5})]
    # When it is drawn
    drawn = pictures.waterfall(tried, stored, now=at(60))
    # Then the rows go attempt by attempt, placed in % of the 10 s it all took
    assert drawn is not None
    assert [(b.kind, b.state, b.x, b.width) for b in drawn.bars] == [
        ("attempt", "failed", 0, 40), ("step", "step", 10, 10),
        ("attempt", "succeeded", 60, 40), ("reused", "reused", 60, pictures.MIN_WIDTH),
        ("llm", "llm", 70, 20)]
    assert [b.y for b in drawn.bars] == [i * pictures.ROW_PX for i in range(5)]
    assert drawn.height == 5 * pictures.ROW_PX + pictures.AXIS_PX
    assert drawn.bars[4].label == "b · m-1 · 10 in / 5 out · 2 s"
    assert drawn.bars[4].title == ("LLM call b (attempt 2): m-1, 10 tokens in, 5 out, 2 s; "
                                   "started at 7 s")
    assert drawn.bars[3].title == ("Step a (attempt 2): reused from attempt 1, not run again; "
                                   "started at 6 s")
    assert drawn.bars[0].title == "Attempt 1: failed, 4 s; started at 0 s"
    assert drawn.summary == ("2 attempts and 3 steps over 10 s: Attempt 1: failed, 4 s; "
                             "Attempt 2: succeeded, 4 s.")
    assert drawn.hidden == 0


def test_labels_start_at_their_bar_or_end_at_its_end_right_of_the_middle() -> None:
    drawn = pictures.waterfall([Attempt(1, at(0), at(10), "succeeded")],
                               [Step("late", 1, at(9), 1000)], now=at(10))
    assert drawn is not None
    attempt, late = drawn.bars
    assert (attempt.label_x, attempt.anchor) == (0, "start")  # centred on the middle
    assert (late.x, late.width, late.label_x, late.anchor) == (80, 10, 90, "end")
    early = pictures.waterfall([Attempt(1, at(0), at(10), "succeeded")],
                               [Step("early", 1, at(2), 1000)], now=at(10))
    assert early is not None
    assert (early.bars[1].label_x, early.bars[1].anchor) == (10, "start")


def test_a_running_attempt_reaches_now() -> None:
    drawn = pictures.waterfall([Attempt(1, at(0), None, None)], [Step("a", 1, at(1), 500)],
                               now=at(4))
    assert drawn is not None
    running, step = drawn.bars
    assert (running.state, running.x, running.width) == ("running", 0, 100)
    assert running.title == "Attempt 1: running so far, 4 s; started at 0 s"
    assert (step.x, step.width, step.took) == (12.5, 12.5, "500 ms")
    assert drawn.total == "4 s"
    # A clock behind the database's draws it as just begun, not backwards
    behind = pictures.waterfall([Attempt(1, at(0), None, None)], [], now=at(-1))
    assert behind is not None
    assert (behind.bars[0].x, behind.bars[0].width) == (0, pictures.MIN_WIDTH)
    assert behind.bars[0].took == "0 s"


def test_nothing_is_drawn_before_the_first_attempt() -> None:
    assert pictures.waterfall([], [], now=T0) is None


def test_a_short_step_is_still_seen_and_never_past_the_right_edge() -> None:
    drawn = pictures.waterfall([Attempt(1, at(0), at(100), "succeeded")],
                               [Step("quick", 1, at(100), 2)], now=at(100))
    assert drawn is not None
    quick = drawn.bars[1]
    assert quick.width == pictures.MIN_WIDTH
    assert quick.x + quick.width == pytest.approx(100)


def test_a_step_stored_after_a_later_attempt_began_is_not_shown_as_reused_by_it() -> None:
    # Attempt 1 was still writing "a" when attempt 2 claimed the run (its lease lost)
    drawn = pictures.waterfall([Attempt(1, at(0), at(5), "crashed"),
                                Attempt(2, at(3), at(6), "succeeded")],
                               [Step("a", 1, at(4), 1000)], now=at(6))
    assert drawn is not None
    assert [b.kind for b in drawn.bars] == ["attempt", "step", "attempt"]


def test_rows_past_the_cap_are_counted_not_drawn() -> None:
    many = [Step(f"s{i}", 1, at(i + 1), 1000) for i in range(pictures.MAX_ROWS + 9)]
    drawn = pictures.waterfall([Attempt(1, at(0), at(200), "succeeded")], many, now=at(200))
    assert drawn is not None
    assert len(drawn.bars) == pictures.MAX_ROWS
    assert drawn.hidden == 10  # 1 attempt and 129 steps: 130 rows
    assert drawn.summary.startswith("1 attempt and 129 steps over 3 min 20 s")


@pytest.mark.parametrize(("span_s", "labels"), [
    (10, ["0 s", "2 s", "4 s", "6 s", "8 s", "10 s"]),
    (4.2, ["0 s", "1 s", "2 s", "3 s", "4.2 s"]),
    (0.8, ["0 s", "200 ms", "400 ms", "600 ms", "800 ms"]),
    (200, ["0 s", "1 min", "2 min", "3 min 20 s"]),
    (0.001, ["0 s", "1 ms"]),
])
def test_the_time_axis_has_a_few_round_ticks_then_the_total(span_s: float,
                                                             labels: list[str]) -> None:
    ticks = pictures.ticks(span_s)
    assert [t.label for t in ticks] == labels
    assert ticks[0].x == 0 and ticks[0].anchor == "start"
    assert ticks[-1].x == 100 and ticks[-1].anchor == "end"
    assert all(t.x <= 80 for t in ticks[:-1])  # none crowds the total


@pytest.mark.parametrize(("seconds", "said"), [
    (0, "0 s"), (0.34, "340 ms"), (1.23, "1.2 s"), (2.0, "2 s"), (45.4, "45 s"),
    (59.6, "1 min"), (125, "2 min 5 s"), (3600, "1 h"), (11400, "3 h 10 min")])
def test_durations_read_as_a_person_says_them(seconds: float, said: str) -> None:
    assert pictures.duration(seconds) == said


# The runs ended per minute ----------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def test_an_hour_without_runs_has_sixty_empty_columns() -> None:
    chart = pictures.per_minute({}, this_minute=NOW)
    assert len(chart.columns) == pictures.MINUTES == 60
    assert all(not c.segments for c in chart.columns)
    assert chart.scale == 1 and chart.busy == []
    assert chart.summary == "No runs ended in the last hour."
    assert chart.columns[-1].title == "This minute (so far): no runs ended"
    assert chart.columns[0].minute == NOW - timedelta(minutes=59)
    assert chart.columns[0].title == "59 min ago: no runs ended"


def test_columns_share_the_width_in_order_and_stack_by_how_runs_ended() -> None:
    # Given 3 succeeded and 1 failed 10 minutes ago, 1 cancelled this minute
    chart = pictures.per_minute({NOW - timedelta(minutes=10): Ended(3, 1, 0),
                                 NOW: Ended(0, 0, 1),
                                 NOW - timedelta(hours=2): Ended(9, 9, 9)},  # not this hour
                                this_minute=NOW)
    width = 100 / 60 - pictures.GAP
    assert [c.x for c in chart.columns] == [
        pytest.approx(i * 100 / 60 + pictures.GAP / 2, abs=0.001) for i in range(60)]
    assert all(c.width == pytest.approx(width, abs=0.001) for c in chart.columns)
    assert chart.scale == 5  # the busiest minute had 4: the scale rounds up to 5
    busy = chart.columns[49]
    assert busy.ago == 10 and busy.ended == Ended(3, 1, 0)
    base = pictures.TOP_PX + pictures.PLOT_PX
    assert [(s.state, s.y, s.height) for s in busy.segments] == [
        ("succeeded", base - 60, 60), ("failed", base - 80, 20)]
    assert busy.title == "10 min ago: 3 succeeded, 1 failed or dead-lettered"
    assert [(s.state, s.height) for s in chart.columns[-1].segments] == [("other", 20)]
    assert chart.totals == Ended(3, 1, 1)
    assert [c.ago for c in chart.busy] == [10, 0]
    assert chart.summary == ("In the last hour 5 runs ended: 3 succeeded, 1 failed or "
                             "dead-lettered, 1 cancelled or expired. The busiest minute, "
                             "10 min ago, had 4.")


def test_one_run_among_many_still_shows_in_its_column() -> None:
    chart = pictures.per_minute({NOW: Ended(999, 1, 0)}, this_minute=NOW)
    assert chart.scale == 1000
    failed = chart.columns[-1].segments[1]
    assert failed.state == "failed" and failed.height == pictures.MIN_SEGMENT_PX


@pytest.mark.parametrize(("peak", "scale"), [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10),
                                             (12, 20), (50, 50), (51, 100)])
def test_the_scale_is_a_round_number_at_or_above_the_busiest_minute(peak: int,
                                                                    scale: int) -> None:
    chart = pictures.per_minute({NOW: Ended(peak)}, this_minute=NOW)
    assert chart.scale == scale


def test_the_key_names_only_the_colours_drawn() -> None:
    drawn = pictures.waterfall([Attempt(1, at(0), at(4), "timed_out"),
                                Attempt(2, at(5), None, None)],
                               [Step("a", 1, at(2), 1000)], now=at(6))
    assert drawn is not None
    assert drawn.legend == [("failed", "failed, timed out or crashed"), ("running", "running"),
                            ("step", "step"), ("reused", "reused, not run again")]
