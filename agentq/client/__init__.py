"""A Python client for agentq's HTTP API: ``Client`` (sync) and ``AsyncClient`` (asyncio).

::

    from agentq.client import BatchItem, Client

    with Client("http://127.0.0.1:8000", api_key) as client:
        run = client.runs.create("echo", {"hello": "world"}, wait=10)
        for event in client.runs.stream(run.id):
            print(event)
        batch = client.runs.batch([BatchItem("echo", {"i": i}) for i in range(3)])
        print(client.batches.get(batch.id).counts)

``agentq.client.webhooks.verify`` checks a webhook's signature; the errors are in
``agentq.client.errors``, the models in ``agentq.client.models``.
"""

from agentq.client import webhooks
from agentq.client.aio import AsyncClient
from agentq.client.errors import (
    AgentqError,
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
    WebhookVerificationError,
)
from agentq.client.models import (
    Batch,
    BatchCreated,
    BatchItem,
    Event,
    ForkedFrom,
    Page,
    Run,
    RunOptions,
    Token,
    TokenReset,
    Waitpoint,
    WebhookEvent,
)
from agentq.client.sync import Client

__all__ = [
    "AgentqError", "ApiError", "AsyncClient", "Batch", "BatchCreated", "BatchItem", "Client",
    "Conflict", "ConnectionFailed", "Event", "Forbidden", "ForkedFrom", "NotFound", "Page",
    "RateLimited", "Run", "RunOptions",
    "ServiceUnavailable", "Token", "TokenReset", "Unauthorized", "ValidationFailed",
    "WaitTimeout", "Waitpoint", "WebhookEvent", "WebhookVerificationError", "webhooks",
]
