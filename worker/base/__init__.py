"""The base layer: what every other part of agentq stands on, and which stands on nothing of
agentq's. Settings (one validated object, from the environment), the errors, Postgres (the
engine, transactions, the tables), the event log's entry and the Redis bus that carries it,
metrics and logs, the Celery app's configuration and queues, and ``Runtime`` (a process's
connections and per-process helpers, which the layers above make through ``own``). Also the
pure helpers several layers share: jsonb (what Postgres can store), ssrf (which addresses
webhooks may reach), signing (Standard Webhooks), deadlines (HTTP with a wall-clock
deadline) and retry (which failures earn another attempt).

May import: nothing of agentq's outside ``worker.base``.
"""
