"""A worker running attempts of runs, many at once: the ``engine`` is the process's event
loop, holding up to AGENTQ_WORKER_SLOTS attempts (async agents on the loop, plain ones in
threads, Postgres in database threads), renewing all their leases in one heartbeat, and
enforcing cancels and time limits; ``execute`` is one attempt's parts (claim, the agent's
context: events, durable steps, ``ctx.llm``, the session; and recording how it ended);
``shutdown`` lets held attempts finish on SIGTERM and re-queues the rest.

May import: ``worker.llm``, ``worker.runs`` and below.
"""
