"""The compose stack (deploy/compose): validated by docker-compose itself, then read for what it promises.

``docker-compose config -q`` (Debian's, installed by ``make tools-deploy``) checks the file against the
Compose schema with the example .env; the resolved configuration is then checked: a 3-node NATS cluster
with authenticated routes, per-role users rendered from the permission table and encryption at rest; two
gateways behind the load balancer; each Switchyard process connecting as the bus role of its targets;
audit on PostgreSQL; Prometheus scraping every process; Grafana provisioned from deploy/grafana; health
checks and restart policies everywhere.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from services.targets import BY_NAME, TARGETS
from shared.bus.permissions import role_name
from tests.deploy.conftest import ROOT

COMPOSE = ROOT / "deploy" / "compose"
FILE = COMPOSE / "compose.yaml"
ENV = COMPOSE / ".env.example"


def compose(*args: str, env_file: Path | None = ENV) -> subprocess.CompletedProcess:
    cmd = ["docker-compose", "-f", str(FILE)] + (["--env-file", str(env_file)] if env_file else []) + list(args)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def config(deploy_tools) -> dict:
    done = compose("config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def targets(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd[cmd.index("--target") + 1].split(",") if "--target" in cmd else []


def switchyard_services(config: dict) -> dict[str, dict]:
    return {n: s for n, s in config["services"].items() if targets(s)}


def test_compose_file_is_valid(deploy_tools):
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_secrets_must_come_from_env(deploy_tools, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose("config", "-q", env_file=empty)
    assert done.returncode != 0 and "deploy/compose/.env" in done.stderr


def test_every_service_has_a_health_check_and_a_restart_policy(config):
    for name, s in config["services"].items():
        assert s.get("healthcheck", {}).get("test"), name
        assert s.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_three_node_jetstream_cluster_with_auth_and_encryption(config):
    nodes = {n: s for n, s in config["services"].items() if n.startswith("nats-")}
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"]
    conf = (COMPOSE / "nats" / "nats.conf").read_text()
    assert "cipher: chachapoly" in conf and "key: $JS_KEY" in conf and "include ./authorization.conf" in conf
    users = (ROOT / "deploy" / "nats" / "authorization.conf").read_text()
    needed = set(re.findall(r"(?:password|key):\s*\$([A-Z][A-Z0-9_]*)", conf + users))
    assert {"JS_KEY", "ROUTE_PASSWORD", "SY_GATEWAY_PASSWORD"} <= needed
    for name, s in nodes.items():
        cmd = s["command"]
        routes = cmd[cmd.index("--routes") + 1].split(",")
        assert sorted(r.rsplit("@", 1)[1] for r in routes) == ["nats-1:6222", "nats-2:6222", "nats-3:6222"]
        assert needed <= set(s["environment"]) | {"SERVER_NAME"}, needed - set(s["environment"])
        assert s["environment"]["SERVER_NAME"] == name


def test_switchyard_processes_cover_the_target_table(config):
    services = switchyard_services(config)
    run = [t for s in services.values() for t in targets(s)]
    for t in TARGETS:
        assert any(r.partition(":")[0] == t.name for r in run), f"nothing runs {t.name}"
    assert sum(1 for s in services.values() if targets(s) == ["gateway"]) == 2
    for name, s in services.items():
        env = s["environment"]
        assert env["SWITCHYARD_NATS__USER"] == role_name(targets(s)), name
        assert env["SWITCHYARD_NATS__PASSWORD"], name
        assert env["SWITCHYARD_NATS__REPLICAS"] == "3" and env["SWITCHYARD_NATS__URL"].count("nats://") == 3
        needs_keys = any("keys" in BY_NAME[t.partition(":")[0]].needs for t in targets(s))
        assert env["SWITCHYARD_KEY_SECRET"], name  # every process refuses the public default
        assert ("SWITCHYARD_ADMIN_KEY" in env) == needs_keys, name
        assert s.get("read_only") is True and "ALL" in s.get("cap_drop", []), name
    assert services["audit"]["environment"]["SWITCHYARD_AUDIT__DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_the_load_balancer_fronts_both_gateways(config):
    nginx = (COMPOSE / "nginx.conf").read_text()
    assert "server gateway-1:8080" in nginx and "server gateway-2:8080" in nginx
    assert config["services"]["lb"]["ports"], "the API is published by the balancer"
    published = [n for n, s in config["services"].items() if s.get("ports")]
    assert set(published) <= {"lb", "prometheus", "grafana"}


def test_prometheus_scrapes_every_process_and_grafana_is_provisioned(config):
    scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    scraped = {t.split(":")[0] for job in scrape["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert set(switchyard_services(config)) <= scraped
    mounts = config["services"]["grafana"]["volumes"]
    sources = {str(m["source"] if isinstance(m, dict) else m.split(":")[0]) for m in mounts}
    assert str(ROOT / "deploy" / "grafana" / "dashboards") in sources
    provisioning = yaml.safe_load((COMPOSE / "grafana" / "dashboards.yaml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_nats_users_are_rendered_from_the_permission_table():
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "tools.nats_auth", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
