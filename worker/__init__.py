"""agentq's engine: the Celery app (``celery -A worker``), models, the run lifecycle, agents."""
