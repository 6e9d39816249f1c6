"""The bare stack agentq is built on, doing the same job, for same-run baselines.

- ``app``: a minimal Flask submit endpoint: one ORM INSERT + COMMIT, one Celery
  ``apply_async`` (``gunicorn 'bench.baseline.minimal:app'``);
- ``celery``: a minimal Celery app whose ``work`` task UPDATEs the row to done, ``noop``
  does nothing, and ``stamp`` notes how long after publishing its body ran
  (``celery -A bench.baseline.minimal:celery worker``).

Same reliability settings as agentq's Celery (late acks, prefetch 1, JSON), nothing more:
no tenants, no keys, no event log, no leases, no outbox.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from flask import Flask, jsonify, request
from sqlalchemy import DateTime, create_engine, func, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

DATABASE_URL = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
REDIS_URL = os.environ["REDIS_URL"]


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "baseline_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    payload: Mapped[Any] = mapped_column(JSONB)
    status: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                 server_default=func.clock_timestamp())
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


engine = create_engine(DATABASE_URL, pool_size=10, max_overflow=10)

celery = Celery("baseline", broker=REDIS_URL)
celery.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                   task_acks_late=True, worker_prefetch_multiplier=1,
                   task_default_queue="baseline")


@celery.task(name="baseline.work")  # type: ignore[untyped-decorator]
def work(job_id: int) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id)
                        .values(status="done", done_at=func.clock_timestamp()))


@celery.task(name="baseline.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    pass


@celery.task(name="baseline.stamp")  # type: ignore[untyped-decorator]
def stamp(published_at: float) -> None:
    redis.Redis.from_url(REDIS_URL).rpush("baseline:latency", time.time() - published_at)


app = Flask(__name__)


@app.post("/jobs")
def submit() -> tuple[Any, int]:
    with Session(engine) as session, session.begin():
        job = Job(payload=request.get_json(), status="queued")
        session.add(job)
        session.flush()
        job_id = job.id
    work.apply_async(args=[job_id])
    return jsonify({"id": job_id}), 202


def create_tables() -> None:
    Base.metadata.create_all(engine)
