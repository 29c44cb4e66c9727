"""Shared state: the JetStream KV stores more than one service reads or writes, and the one way they are written.

    kv.py         compare-and-set (``cas``), create-only (``create``), "key missing" vs "bucket unreachable"
    buckets.py    every bucket: sy_keys, sy_teams, sy_budgets, sy_ratelimits, sy_admissions, sy_jobs,
                  sy_breakers, sy_health, sy_cache, sy_prompts, sy_queues
    teams.py      team settings, and ``effective`` (a team's settings with the policy defaults filled in)
    scopes.py     budget / rate-limit scope keys (``team.<tenant>.<team>``, ``key.<key_id>``)
    budgets.py    reserve → settle → release on budget counters
    ratelimit.py  RPM / TPM limits (GCRA)
    breakers.py   circuit breaker transitions, pure
    health.py     breakers and observed provider health, watched per process
    jobs.py       async job records
    cache.py      the response cache: answers, coalescing locks, semantic index (rules in ``shared.cache``)
    prompts.py    prompt templates: versions and the active one
    queues.py     per-tenant caps on queued jobs and their bytes
    settings.py   the breaker and health settings sections
    stores.py     ``Stores``: the stores of one process, built once from settings

API keys live in ``shared.auth`` (``KeyStore``), written through ``kv.py``
like everything here. Services reach this state only through ``shared``,
never through one another.
"""
