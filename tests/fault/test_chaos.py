"""``make chaos``'s short run inside the suite: every service kind SIGKILLed, nats-server killed, jobs cancelled
mid-call, a job flood, a revocation right after a NATS restart -- and every invariant count 0.

It runs ``tools/chaos.py --short`` as its own process (its services are processes too) and fails with the
printed table when the tool exits non-zero. The audit store is PostgreSQL (a fresh database per run) when it
answers on 127.0.0.1:5432, else SQLite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fault
ROOT = Path(__file__).resolve().parents[2]


def test_short_chaos_run_breaks_no_invariant():
    done = subprocess.run([sys.executable, "-m", "tools.chaos", "--short"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    table = done.stdout[done.stdout.find("switchyard chaos"):] if "switchyard chaos" in done.stdout else done.stdout
    print(table)
    assert "switchyard chaos" in done.stdout, f"no table printed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"invariants broken:\n{table}"
