"""Every JetStream KV bucket of shared state, declared once: name, history, expiry.

A bucket is created on first use (``Bus.kv``) with these options, whichever
process opens it first, so every reader and writer must name it from here.
"""

from __future__ import annotations

from shared.bus import Bucket

KEYS = Bucket("sy_keys", history=1, description="API keys: HMACs and attributes")
TEAMS = Bucket("sy_teams", history=1, description="teams and their governance settings")
BUDGETS = Bucket("sy_budgets", history=1, description="budget counters and open reservations per team / key")
RATES = Bucket("sy_ratelimits", history=1, ttl_s=120, description="GCRA rate-limit state per team / key")
ADMISSIONS = Bucket("sy_admissions", history=1, ttl_s=86400, description="what admission took, per request")
JOBS = Bucket("sy_jobs", history=1, ttl_s=7 * 24 * 3600, description="async job status and results")
# No TTL: an operator's forced state must not expire.
BREAKERS = Bucket("sy_breakers", history=1, description="circuit breaker state per deployment")
# What nobody refreshes fades away.
HEALTH = Bucket("sy_health", history=1, ttl_s=600,
                description="observed outcomes, latency and in-flight calls per deployment and process; retry budgets")
