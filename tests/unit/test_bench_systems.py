"""The bench's Switchyard shapes: each runs every target exactly once, and only the gateway's process keeps its priority."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.systems import (PIPELINE_NICE, SY_DUO_TARGETS, SY_SPLIT_TARGETS, SY_TRIO_TARGETS, RequestPathOnly,
                           SwitchyardDuo, SwitchyardSplit, SwitchyardTrio)
from services.targets import ALL, parse_targets


@pytest.mark.parametrize("targets", [SY_SPLIT_TARGETS, SY_DUO_TARGETS, SY_TRIO_TARGETS], ids=["split", "duo", "trio"])
def test_a_shape_runs_every_target_once(targets):
    runs = Counter(t for spec in targets for t in parse_targets(spec))
    assert set(runs) == set(ALL)
    assert all(n == 1 for n in runs.values())


class _Procs:
    def __init__(self) -> None:
        self.extra: list = []
        self.started: list[tuple[str, list[str], dict]] = []

    def start(self, name, cmd, env=None, cwd=None):
        self.started.append((name, cmd, env))
        return object()


class _Nats:
    url = "nats://127.0.0.1:1"

    class proc:
        pid = 0

    def __init__(self, *_a, **_k) -> None:
        pass

    def start(self):
        return self

    def client_env(self) -> dict[str, str]:
        return {"SWITCHYARD_NATS__URL": self.url}


@pytest.mark.parametrize("cls, processes", [(SwitchyardSplit, 5), (SwitchyardDuo, 2), (SwitchyardTrio, 3),
                                               (RequestPathOnly, 1)])
def test_every_process_but_the_gateways_runs_at_the_pipeline_nice(cls, processes, tmp_path, monkeypatch):
    import bench.systems

    monkeypatch.setattr(bench.systems, "NatsServer", _Nats)
    procs = _Procs()

    class Upstream:
        def base_url(self, mode: str) -> str:
            return f"http://127.0.0.1:9/{mode}/v1"

    system = cls(procs, Upstream(), tmp_path)
    system.start()
    assert len(procs.started) == processes
    for name, cmd, env in procs.started:
        target = cmd[cmd.index("--target") + 1]
        assert env["SWITCHYARD_NATS__URL"] == _Nats.url
        if "gateway" in target.split(","):
            assert "SWITCHYARD_NICE" not in env
        else:
            assert env["SWITCHYARD_NICE"] == str(PIPELINE_NICE), name


def test_the_request_path_alone_runs_everything_but_audit(tmp_path):
    system = RequestPathOnly(_Procs(), None, tmp_path)
    runs = [t for spec in system.targets for t in parse_targets(spec)]
    assert sorted(runs) == sorted(set(ALL) - {"audit"})


def test_a_run_without_nginx_or_wrk_says_why_and_one_with_both_goes_on():
    from bench.install import Tools, unusable

    assert unusable(Tools(nginx="/usr/sbin/nginx", wrk="/usr/bin/wrk")) is None
    why = unusable(Tools(nginx=None, wrk="/usr/bin/wrk", problems={"nginx-extras": "apt-get failed"}))
    assert why is not None and "nginx" in why and "apt-get failed" in why


def test_the_all_in_one_shapes_differ_only_by_audit_in_a_child(tmp_path):
    from bench.systems import SwitchyardAll, SwitchyardAllChild

    class Upstream:
        def base_url(self, mode: str) -> str:
            return f"http://127.0.0.1:9/{mode}/v1"

    started = {}
    for cls in (SwitchyardAll, SwitchyardAllChild):
        procs = _Procs()
        cls(procs, Upstream(), tmp_path).start()
        (name, cmd, env), = procs.started
        started[name] = (cmd[cmd.index("all") + 1:], "SWITCHYARD_METRICS_PORT" in env)
    assert started == {"sy-all": (["--embedded-nats"], False),
                       "sy-all-child": (["--embedded-nats", "--audit-process"], True)}
