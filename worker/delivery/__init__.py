"""Outbound webhooks: the tenant's endpoints and secrets (``webhooks``), and sending each
delivery the run lifecycle made (``notifier``): held by one sender at a time (a tenant at
most AGENTQ_WEBHOOK_TENANT_CONCURRENCY at once), signed, sent to an address the SSRF guard
checked within a wall-clock deadline, recorded fenced by the attempt, retried on a schedule.

May import: ``worker.runs`` and below.
"""
