"""The test catalogs: the system's (every end-to-end test), the router's (scoring and health) and the
governance tests' (data classes, flaky and slow models)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
SYSTEM_CATALOG = DATA / "catalog.yaml"
ROUTER_CATALOG = DATA / "router-catalog.yaml"

# The test catalog, plus a provider that is not cleared for confidential data and models on it; the governance
# tests write it into their data dir.
GOVERNANCE_CATALOG = """
providers:
  - name: mock
    type: mock
    fault_injection: true
  - name: mock-flaky
    type: mock
    fault_injection: true
    options: {failure_rate: 1.0, failure_status: 503}
  - name: mock-slow
    type: mock
    fault_injection: true
    options: {latency_ms: 300}
  - name: mock-cloud
    type: mock
    max_data_class: internal
models:
  - name: flaky-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-flaky, upstream_model: flaky-1}]
  - name: slow-1
    input_per_mtok: 0.5
    output_per_mtok: 1.0
    deployments: [{provider: mock-slow, upstream_model: slow-1}]
  - name: cloud-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-cloud, upstream_model: cloud-1}]
  - name: hybrid-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-cloud, upstream_model: hybrid-1}, {provider: mock, upstream_model: hybrid-1}]
aliases:
  resilient: [flaky-1, mock-1]
"""

# The observability tests': a provider that always fails (its breaker opens and stays open), an alias whose
# first candidate always fails after 300 ms (every request falls back), and one that answers 429 half the time.
OBSERVABILITY_CATALOG = """
providers:
  - name: mock
    type: mock
    fault_injection: true
  - name: mock-down            # always 503: its breaker opens and stays open
    type: mock
    options: {failure_rate: 1.0, failure_status: 503}
    breaker: {minimum_calls: 4, window_size: 8, open_wait_s: 600}
  - name: mock-flaky           # always 503 after 300 ms, breaker off: every request to `resilient` falls back
    type: mock
    options: {failure_rate: 1.0, failure_status: 503, latency_ms: 300}
    breaker: {enabled: false}
  - name: mock-busy            # 429 half the time: retried after a backoff
    type: mock
    options: {failure_rate: 0.5, failure_status: 429, seed: 7}
    breaker: {enabled: false}
models:
  - name: down-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-down, upstream_model: down-1}]
  - name: flaky-1
    input_per_mtok: 1.0
    output_per_mtok: 2.0
    deployments: [{provider: mock-flaky, upstream_model: flaky-1}]
  - name: busy-1
    input_per_mtok: 0.5
    output_per_mtok: 1.0
    deployments: [{provider: mock-busy, upstream_model: busy-1}]
aliases:
  resilient: [flaky-1, mock-1]
"""
