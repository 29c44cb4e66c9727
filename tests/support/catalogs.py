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
  - name: mock-flaky
    type: mock
    options: {failure_rate: 1.0, failure_status: 503}
  - name: mock-slow
    type: mock
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
