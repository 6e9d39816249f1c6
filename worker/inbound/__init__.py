"""Inbound webhooks: how each platform signs and what its deliveries mean (``providers``),
and turning a verified delivery into exactly one run (``hooks``: hook sources, receive).

May import: ``worker.runs`` and below.
"""
