"""``demo.research``: a research agent's shape (parse, query, evaluate) without an LLM.

It answers from a small built-in library of notes, takes a few seconds and reports each
phase, so a demo shows what a real agent run looks like from the outside.
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, ConfigDict, Field

from worker.agents import agent
from worker.agents.context import RunContext

LIBRARY = (
    {
        "title": "Rayleigh scattering",
        "url": "https://en.wikipedia.org/wiki/Rayleigh_scattering",
        "text": "Air molecules scatter short (blue) wavelengths of sunlight much more than long "
        "(red) ones, roughly as the inverse fourth power of wavelength, so the sky looks blue.",
    },
    {
        "title": "Diffuse sky radiation",
        "url": "https://en.wikipedia.org/wiki/Diffuse_sky_radiation",
        "text": "Sunsets look red because light crosses more atmosphere near the horizon and "
        "the blue part is scattered away before it reaches the eye.",
    },
    {
        "title": "Photosynthesis",
        "url": "https://en.wikipedia.org/wiki/Photosynthesis",
        "text": "Plants are green because chlorophyll absorbs red and blue light for "
        "photosynthesis and reflects green light.",
    },
    {
        "title": "Tide",
        "url": "https://en.wikipedia.org/wiki/Tide",
        "text": "Tides are caused by the Moon's and the Sun's gravity pulling unevenly on the "
        "oceans as the Earth rotates.",
    },
    {
        "title": "Season",
        "url": "https://en.wikipedia.org/wiki/Season",
        "text": "Seasons happen because the Earth's axis is tilted, so each hemisphere gets "
        "more direct sunlight for part of the year.",
    },
)

_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "do", "does", "how", "is", "of", "the", "to", "what", "when",
     "where", "which", "who", "why"]
)


class ResearchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000)
    phase_s: float = Field(default=1.0, ge=0, le=30, description="Seconds spent per phase.")


def _terms(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z]+", text.lower()) if word not in _STOPWORDS}


def _rank(question: str) -> list[tuple[int, dict[str, str]]]:
    terms = _terms(question)
    scored = [(len(terms & _terms(note["title"] + " " + note["text"])), note) for note in LIBRARY]
    return sorted((item for item in scored if item[0] > 0), key=lambda item: -item[0])


def _sub_questions(question: str) -> list[str]:
    parts = [part.strip(" ?.,") for part in re.split(r"\?|\band\b|;", question)]
    return [part for part in parts if _terms(part)][:5] or [question]


@agent("demo.research", input_model=ResearchInput, timeout_s=120)
def research(ctx: RunContext, input: ResearchInput) -> dict[str, object]:
    """Answer a question from a small library: parse, query, evaluate, each a durable step
    (a run cut off midway resumes where it stood)."""

    def parse() -> dict[str, list[str]]:
        terms = sorted(_terms(input.question))
        ctx.emit("parsing", "Analyzing your question…", terms=terms)
        time.sleep(input.phase_s)
        return {"terms": terms, "sub_questions": _sub_questions(input.question)}

    def query(number: int, sub_question: str) -> list[dict[str, object]]:
        ctx.emit("querying", f"Searching the library ({len(LIBRARY)} notes) for "
                             f"“{sub_question}”…", sub_question=number)
        time.sleep(input.phase_s / len(plan["sub_questions"]))
        return [{"score": score, **note} for score, note in _rank(sub_question)]

    def evaluate(found: list[dict[str, object]]) -> list[dict[str, object]]:
        ctx.emit("evaluating", "Evaluating evidence (round 1)…", candidates=len(found))
        time.sleep(input.phase_s)
        best: dict[object, dict[str, object]] = {}
        for note in sorted(found, key=lambda note: -int(str(note["score"]))):
            best.setdefault(note["title"], note)
        return list(best.values())[:2]

    plan = ctx.step("parse", parse)
    found = [note for number, sub_question in enumerate(plan["sub_questions"], 1)
             for note in ctx.step(f"query:{number}", query, number, sub_question)]
    ctx.check_cancelled()
    best = ctx.step("evaluate:1", evaluate, found)
    answer = (" ".join(str(note["text"]) for note in best) if best
              else "The library has nothing on that question yet.")
    ctx.emit("done", "Answer ready.", citations=len(best))
    return {
        "answer": answer,
        "citations": [{"title": note["title"], "url": note["url"]} for note in best],
    }


class FanoutInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: list[str] = Field(min_length=1, max_length=1000)
    max_concurrency: int = Field(default=4, ge=1, le=1000)
    phase_s: float = Field(default=1.0, ge=0, le=30, description="Each child's seconds per phase.")


@agent("demo.fanout", input_model=FanoutInput, timeout_s=120)
def fanout(ctx: RunContext, input: FanoutInput) -> dict[str, object]:
    """Hand each question to a ``demo.research`` child, at most ``max_concurrency`` at once,
    and return their answers in the questions' order. While its children work, this run
    waits, holding no worker slot."""
    answers = ctx.map("demo.research",
                      [{"question": question, "phase_s": input.phase_s}
                       for question in input.questions],
                      max_concurrency=input.max_concurrency, name="research")
    ctx.emit("done", f"{len(answers)} answers gathered.")
    return {"answers": [answer["answer"] for answer in answers]}
