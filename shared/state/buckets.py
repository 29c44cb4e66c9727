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
# Job results are completions: kept only as long as ``NatsSettings.job_ttl_s`` says (default one day).
JOBS = Bucket("sy_jobs", history=1, ttl_s=24 * 3600, ttl_setting="job_ttl_s",
              description="async job status and results")
# Per tenant: the jobs accepted and not finished, and their bytes (shared.state.queues).
QUEUES = Bucket("sy_queues", history=1, description="queued async jobs and their bytes per tenant")
# Stored Responses API responses (the conversation each continues) and the Batch API's files and batches: request
# and completion text, so kept only as long as ``NatsSettings.conversation_ttl_s`` / ``file_ttl_s`` say.
CONVERSATIONS = Bucket("sy_conversations", history=1, ttl_s=7 * 24 * 3600, ttl_setting="conversation_ttl_s",
                       description="stored Responses API responses and their conversations, per tenant")
FILES = Bucket("sy_files", history=1, ttl_s=7 * 24 * 3600, ttl_setting="file_ttl_s",
               description="uploaded files (batch input) and batch output files, per tenant, in chunks")
BATCHES = Bucket("sy_batches", history=1, ttl_s=7 * 24 * 3600, ttl_setting="file_ttl_s",
                 description="Batch API batches per tenant: their lines' jobs and progress")
# Per tenant and Idempotency-Key: the request it started and, once known, its answer (shared.state.idempotency).
IDEMPOTENCY = Bucket("sy_idempotency", history=1, ttl_s=24 * 3600, ttl_setting="idempotency_ttl_s",
                     description="Idempotency-Key per tenant: the request it started and its answer")
# No TTL: an operator's forced state must not expire.
BREAKERS = Bucket("sy_breakers", history=1, description="circuit breaker state per deployment")
# Every record carries its own expiry (a team's TTL); the bucket's age limit is the ceiling an operator may set.
CACHE_MAX_AGE_S = 7 * 24 * 3600
CACHE = Bucket("sy_cache", history=1, ttl_s=CACHE_MAX_AGE_S,
               description="response cache per team: answers by request hash, coalescing locks, semantic index")
PROMPTS = Bucket("sy_prompts", history=1, description="prompt templates per tenant: versions and the active one")
# One mark per attempt (shared.state.attempts): claimed, done, or ended before it; a replay is within its deadline.
ATTEMPTS = Bucket("sy_attempts", history=1, ttl_s=3600, description="what became of each attempt (claimed by a "
                  "worker, its outcome published, or the request ended before it)")
# What nobody refreshes fades away.
HEALTH = Bucket("sy_health", history=1, ttl_s=600,
                description="observed outcomes, latency and in-flight calls per deployment and process; retry budgets")
