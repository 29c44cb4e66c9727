"""The target table: parsing ``--target``, what a process shape derives from the table, ``--list-targets``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from services.targets import ALL, BY_NAME, REQUEST_PATH, RESOURCES, TARGETS, Shape, describe, parse_targets

ROOT = Path(__file__).resolve().parents[2]


def test_every_target_names_a_module_with_run_and_known_resources():
    for t in TARGETS:
        assert callable(importlib.import_module(t.module).run), t.name
        assert set(t.needs) <= set(RESOURCES), t.name
        assert set(t.fuses) <= set(BY_NAME) - {t.name}, t.name


def test_parse_targets_all_lists_and_arguments():
    assert parse_targets("all") == list(ALL) == ["audit", "policy", "router", "worker", "gateway"]
    assert parse_targets(" gateway , router,gateway") == ["gateway", "router"]
    assert parse_targets("worker:openai,audit") == ["worker:openai", "audit"]
    assert parse_targets("all,audit") == list(ALL)


@pytest.mark.parametrize("spec, says", [
    ("", "no target given"),
    ("bogus", "unknown target 'bogus'"),
    ("gateway:x", "takes no argument"),
    ("worker:", "name a provider"),
])
def test_parse_targets_refuses_bad_specs_with_a_clear_message(spec, says):
    with pytest.raises(SystemExit) as exc:
        parse_targets(spec)
    assert says in str(exc.value)


def test_shape_derives_busy_polling_key_seeding_ops_and_fusion_from_the_table():
    everything = Shape.of(parse_targets("all"))
    assert everything.busy_polls and everything.serves_ops and everything.needs("keys")
    assert everything.fused("router") and not everything.fused("policy")

    assert Shape.of(parse_targets(",".join(REQUEST_PATH))).busy_polls  # sy-duo's request-path process
    assert not Shape.of(["gateway", "policy", "router"]).busy_polls

    router_alone = Shape.of(["router"])
    assert not router_alone.fused("router") and not router_alone.serves_ops and not router_alone.needs("keys")
    assert Shape.of(["policy", "router"]).fused("router")
    assert Shape.of(["policy"]).needs("keys") and not Shape.of(["policy"]).fused("router")
    assert Shape.of(["worker:openai"]).runs("worker") and not Shape.of(["worker:openai"]).busy_polls
    assert not Shape.of(["audit"]).shares_process("audit")
    assert Shape.of(["audit", "worker:openai"]).shares_process("audit")


def test_list_targets_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "services", "--list-targets"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == describe().strip()
    for t in TARGETS:
        line = next(ln for ln in out.splitlines() if ln.startswith(t.name))
        assert ",".join(t.needs) in line
    assert "policy" in out and "router" in next(ln for ln in out.splitlines() if ln.startswith("policy"))
