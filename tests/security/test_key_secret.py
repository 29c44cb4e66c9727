"""Finding 1 (key secret): the public default ``SWITCHYARD_KEY_SECRET`` is refused unless everything is local.

With the default secret anyone can compute the HMAC of a key of their choosing. A process keeps it only when
the bus and its API listen on loopback (the embedded default), and says so loudly; reachable from elsewhere,
it refuses to start. The attack: start a gateway on 0.0.0.0 (or against a remote bus) without setting a secret.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from services.bootstrap import check_key_secret
from services.gateway.settings import GatewaySettings
from services.settings import Settings
from services.targets import Shape
from shared.natsd import free_port
from shared.settings import NatsSettings
from tests.support.procs import ROOT

GATEWAY = Shape.of(["gateway"])
POLICY = Shape.of(["policy"])


def settings(**kw) -> Settings:
    return Settings(nats=NatsSettings(url=kw.pop("url", "nats://127.0.0.1:4222")), **kw)


@pytest.mark.parametrize("shape, values, exposed", [
    (GATEWAY, {"gateway": GatewaySettings(host="0.0.0.0")}, "the API"),
    (POLICY, {"url": "nats://10.1.2.3:4222"}, "the bus"),
    (GATEWAY, {"url": "nats://127.0.0.1:4222,nats://nats-1.internal:4222"}, "the bus"),
])
def test_the_default_secret_is_refused_when_anything_listens_beyond_loopback(shape, values, exposed):
    with pytest.raises(SystemExit) as refused:
        check_key_secret(settings(**values), shape)
    assert "SWITCHYARD_KEY_SECRET" in str(refused.value) and exposed in str(refused.value)


def test_the_default_secret_on_loopback_starts_with_a_loud_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="switchyard"):
        check_key_secret(settings(gateway=GatewaySettings(host="127.0.0.1")), GATEWAY)
        check_key_secret(settings(url="nats://localhost:4222"), POLICY)
    assert sum("public default" in r.getMessage() for r in caplog.records) == 2


def test_a_secret_of_ones_own_is_taken_anywhere(caplog):
    with caplog.at_level(logging.WARNING, logger="switchyard"):
        check_key_secret(settings(key_secret="a-long-random-secret-of-our-own", url="nats://10.1.2.3:4222",
                                  gateway=GatewaySettings(host="0.0.0.0")), GATEWAY)
    assert not caplog.records


def test_a_gateway_on_every_interface_with_the_default_secret_does_not_start(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SWITCHYARD_GATEWAY__HOST": "0.0.0.0",
           "SWITCHYARD_GATEWAY__PORT": str(free_port()), "SWITCHYARD_DATA_DIR": str(tmp_path),
           "SWITCHYARD_NATS__URL": "nats://127.0.0.1:9", "SWITCHYARD_NATS__CONNECT_TIMEOUT_S": "1"}
    run = subprocess.run([sys.executable, "-m", "services", "--target", "gateway"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "refusing to start" in run.stderr and "SWITCHYARD_KEY_SECRET" in run.stderr
