"""The database layer's pool: connections lent for autocommit come back transactional."""

from __future__ import annotations

import psycopg
from sqlalchemy import text

from worker.base.db import Database
from worker.base.settings import Settings


def test_a_transaction_after_autocommit_use_is_still_one_transaction(
        settings: Settings) -> None:
    db = Database(settings.model_copy(update={"db_pool_size": 1}))  # one connection, reused
    try:
        with db.autocommit() as session:
            session.execute(text("SELECT 1"))
        assert db.one_row("SELECT 1 AS one", {}).one == 1
        with db.transaction() as session:
            session.execute(text("SELECT 1"))
            driver = session.connection().connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            assert driver.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        db.dispose()
