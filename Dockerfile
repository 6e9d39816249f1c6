# One image for every agentq process: the command decides (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY agentq ./agentq
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install -e . \
    && useradd --create-home --uid 10001 agentq
USER agentq

EXPOSE 8000 5555
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "gevent", "--workers", "2", \
     "--worker-connections", "2000", "--graceful-timeout", "30", "api:create_app()"]
