"""A worker running one attempt of a run: ``execute`` claims it, gives the agent its
context (``ctx``: events, durable steps, ``ctx.llm``, the session), keeps its lease alive
(the heartbeat), and records how it ended; the ``supervisor`` stops attempts asked to
cancel; ``shutdown`` lets running attempts finish on SIGTERM and re-queues the rest.

May import: ``worker.llm``, ``worker.runs`` and below.
"""
