"""The batches calls, as flows (``agentq.client.protocol``): ``runs.batch`` submits many
runs in one request, ``batches.get`` reads how they stand; once for both clients."""

from __future__ import annotations

from typing import Any

from agentq.client.models import Batch, BatchCreated, BatchItem
from agentq.client.protocol import Core, Flow, parsed, segment
from agentq.client.runs import IDEMPOTENCY_KEY, new_key, run_body


class BatchCalls:
    """Build each batches request, send it as a flow step, read its answer."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def create(self, items: list[dict[str, Any] | BatchItem], *,
               idempotency_key: str | None) -> Flow[BatchCreated]:
        """POST /v1/runs/batch with a key for the whole request (made here if none is
        given): a retry is answered with the batch it made, not a second one."""
        request = self.core.request(
            "POST", "/v1/runs/batch", json={"items": [item_body(item) for item in items]},
            headers={IDEMPOTENCY_KEY: idempotency_key or new_key()})
        return parsed(BatchCreated, (yield from self.core.call(request, safe=True)))

    def get(self, batch_id: str) -> Flow[Batch]:
        request = self.core.request("GET", f"/v1/batches/{segment(batch_id)}")
        return parsed(Batch, (yield from self.core.call(request, safe=True)))


def item_body(item: dict[str, Any] | BatchItem) -> dict[str, Any]:
    """What the batch is sent for one item (a dict is read as ``BatchItem(**item)``): the
    body ``runs.create`` would send, so that an item and a run created with one key are
    one run, and the item's key."""
    if isinstance(item, dict):
        item = BatchItem(**item)
    key = {} if item.idempotency_key is None else {"idempotency_key": item.idempotency_key}
    return {**run_body(item.agent, item.input, item.options), **key}
