"""Bootstrap: keys from configuration become key-store entries with every attribute an admin-made key has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest


def test_configured_keys_carry_their_attributes():
    """A key from SWITCHYARD_API_KEYS gets the same attributes as one made through the admin API."""
    from services.bootstrap import build_keyring
    from services.settings import ApiKeyConfig, Settings

    settings = Settings(admin_key="sk-admin", api_keys={"sk-limited": ApiKeyConfig(
        tenant="acme", team="ml", role="viewer", expires_at=2e9, allowed_models=["mock-1"],
        limits={"rpm": 10, "daily_usd": 1.5})})
    store, generated = build_keyring(settings)
    assert generated is None
    [entry] = [e for e in store._seed if e.key == "sk-limited"]
    assert (entry.tenant, entry.team, entry.role, entry.expires_at) == ("acme", "ml", "viewer", 2e9)
    assert entry.allowed_models == ["mock-1"] and entry.limits.rpm == 10 and entry.limits.daily_usd == 1.5
    bad = Settings(admin_key="sk-admin", api_keys={"sk-x": ApiKeyConfig(limits={"rpm": 0})})
    with pytest.raises(msgspec.ValidationError):
        build_keyring(bad)


_PRIORITY_PROBE = """
import json, os, threading
from services.bootstrap import lower_cpu_priority, session_group_nice
before = session_group_nice()
lower_cpu_priority(int(os.environ["NICE"]))
seen = {}
t = threading.Thread(target=lambda: seen.update(thread=os.getpriority(os.PRIO_PROCESS, 0)))
t.start(); t.join()
print(json.dumps({"nice": os.getpriority(os.PRIO_PROCESS, 0), "thread": seen["thread"], "before": before,
                  "after": session_group_nice()}))
"""


def _probe(nice: int, new_session: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _PRIORITY_PROBE], env={**os.environ, "NICE": str(nice)},
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
                         start_new_session=new_session)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_nice_lowers_the_process_and_its_own_session_group():
    """SWITCHYARD_NICE: the process and every thread it starts later run at that nice; a process leading its
    own session (as each bench/supervisor-started target does) also sets its autogroup, which is what the
    kernel weighs between sessions."""
    want = max(7, os.getpriority(os.PRIO_PROCESS, 0))  # a child starts at its parent's nice
    got = _probe(7, new_session=True)
    assert got["nice"] == want and got["thread"] == want
    if got["before"] is not None:  # a kernel with autogroups
        assert got["before"] == 0 and got["after"] == 7


def test_nice_leaves_a_shared_session_group_alone():
    """A target started inside someone else's session (a shell's) lowers only itself, not the whole session."""
    want = max(5, os.getpriority(os.PRIO_PROCESS, 0))
    got = _probe(5, new_session=False)
    assert got["nice"] == want and got["thread"] == want
    assert got["after"] == got["before"]


def test_nice_zero_changes_nothing_and_out_of_range_is_refused():
    from pydantic import ValidationError

    from services.bootstrap import lower_cpu_priority
    from services.settings import Settings

    before = os.getpriority(os.PRIO_PROCESS, 0)
    lower_cpu_priority(0)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before and Settings().nice == 0
    for bad in (-1, 20):
        with pytest.raises(ValidationError):
            Settings(nice=bad)


def test_session_group_nice_reads_every_form_of_the_autogroup_file(tmp_path, monkeypatch):
    """A group's nice from "/autogroup-N nice K"; None for the boot session's default group (the file is empty
    there: a CI runner started by PID 1 runs the suite so) and for a kernel without the file."""
    from services import bootstrap

    group = tmp_path / "autogroup"
    monkeypatch.setattr(bootstrap, "_AUTOGROUP", group)
    assert bootstrap.session_group_nice() is None
    group.write_text("")
    assert bootstrap.session_group_nice() is None
    group.write_text("/autogroup-125 nice 3\n")
    assert bootstrap.session_group_nice() == 3
