"""``ctx.llm``: chat completions against any OpenAI-compatible endpoint (``client``), each
call a durable step, with retries within the attempt, budgets and usage.

May import: ``worker.runs`` and below.
"""
