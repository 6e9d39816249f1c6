"""Who is calling, and for how long: tenants, API keys (stored hashed) and JWTs, each
request's rate limit, the per-process key cache, and the grants a stream or socket holds
for as long as its credential is valid (a revocation, announced over Redis, ends them).

May import: ``worker.base``.
"""
