"""agentq's engine. ``celery -A worker worker|beat|flower`` loads ``worker.celery``.

The tree follows a run's journey, and its dependencies point one way (``make lint``
checks it with import-linter; no import circle, no import hidden in a function)::

    base        settings, errors, db, models, event, bus, metrics, logs, queues (the Celery
                app's configuration), runtime (a process's connections and helpers), and
                the pure parts: jsonb, ssrf, signing, deadlines, retry. Imports nothing above.
    access      who is calling: tenants, API keys, JWTs, rate limits, the key cache and the
                grants that end a revoked key's streams.        <- base
    agents      what users write: @agent, the registry, RunContext, the built-in agents.
                                                                 <- base
    runs        a run's life in Postgres: submission and admission, the store, attempts and
                their leases, events, sessions, steps, idempotency, dispatch, the outbox,
                the lifecycle (what a change of status sets going), follow, the sweeper.
                                                                 <- base, access, agents
    llm         ctx.llm: the chat client, each call a durable step.       <- runs
    execution   a worker holding many attempts (the engine): claim, call the agent,
                heartbeat, cancels and limits, record; graceful shutdown.  <- llm, runs
    delivery    outbound webhooks: endpoints, holds and attempts, the notifier.  <- runs
    inbound     GitHub, Slack, Stripe, Standard Webhooks: verify, deduplicate, submit.
                                                                 <- runs
    app         a process's runtime assembled from every layer, and the Celery tasks.
    celery      the Celery app of ``celery -A worker`` (the API, ``api``, builds its own).

A run travels: ``runs.submission`` (plan, admit, store) -> ``runs.dispatch`` (publish) ->
``execution.engine`` (a slot) -> ``execution.execute`` (``runs.attempts.claim``, the agent,
``runs.attempts.finish``) ->
``runs.lifecycle`` (its deliveries in ``runs.outbox``, its successors) ->
``delivery.notifier`` (the signed webhook). ``worker.context`` and ``worker.errors`` are the
public paths agents import.
"""
