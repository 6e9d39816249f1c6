"""A run's life in Postgres, from submission to its end, with every write fenced.

``submission`` plans a run (the agent's policy, the input checked) and stores it under the
tenant's caps (``admission``) and its session's policy; ``store`` reads, lists, cancels
and replays runs; ``dispatch`` publishes them to the broker (and the ``sweeper`` publishes
what was lost); ``attempts`` claims an attempt under a lease and finishes it; every change
of status writes an entry of the event log (``events``), and one that ends or frees a run
calls ``lifecycle``, which makes its webhook deliveries (``outbox``) in the same
transaction and picks the runs it held back. ``follow`` reads a run's events live (SSE,
WebSocket, ``?wait=``); ``steps`` are durable steps; ``sessions``, ``idempotency``,
``spend`` (LLM usage and budgets), ``views`` (runs as the API shows them), ``readiness``
and ``observe`` (counts for health and the dashboard) complete it.

May import: ``worker.base``, ``worker.access``, ``worker.agents``.
"""
