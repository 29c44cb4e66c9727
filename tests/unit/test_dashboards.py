"""The Grafana dashboards and provisioning files, and the Prometheus rules, checked without running them.

Dashboards: what tools/dashboards.py writes (so the JSON is never edited by hand apart from its source), loadable
by Grafana 10+ (schema version, a ``datasource`` template variable and no ``${DS_…}`` import inputs), unique
panel ids, a unit and a description on every panel, every panel's data source the variable, a grid that fits.
Rules: ``promtool check rules`` and ``promtool test rules`` (tests in deploy/prometheus/tests/), every alert
tested there and documented in docs/operations.md. (tests/e2e/test_observability.py evaluates every query
against a real Prometheus.)
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.prometheus import DASHBOARDS, RULES, binary
from tools import dashboards

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
FILES = sorted(DASHBOARDS.glob("*.json"))


def test_the_dashboard_files_are_what_the_generator_writes():
    assert sorted(f.name for f in FILES) == sorted(dashboards.DASHBOARDS)
    for name, build in dashboards.DASHBOARDS.items():
        assert (DASHBOARDS / name).read_text() == dashboards.render(build()), f"{name}: run `make dashboards`"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_dashboard_loads_in_grafana_10_with_its_datasource_variable(path: Path):
    text = path.read_text()
    board = json.loads(text)
    assert "${DS_" not in text and "__inputs" not in board and "__requires" not in board
    assert board["schemaVersion"] >= 36 and board["uid"].startswith("switchyard-") and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        where = f"{path.name} / {p['title']}"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert len(p.get("description", "")) > 20, f"{where}: no description"
        assert p["targets"] and all(t["expr"].strip() and t["datasource"]["uid"] == "${datasource}"
                                    for t in p["targets"]), where
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), where
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, where
        # only Grafana's $__rate_interval: any other variable would not resolve in a provisioned copy
        assert set(re.findall(r"\$\{?(\w+)", " ".join(t["expr"] for t in p["targets"]))) <= {"__rate_interval"}


def test_panels_do_not_overlap():
    for path in FILES:
        cells: set[tuple[int, int]] = set()
        for p in json.loads(path.read_text())["panels"]:
            g = p["gridPos"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{path.name} / {p['title']} overlaps another panel"
            cells |= mine


def test_the_provisioning_files_name_the_datasource_and_the_dashboards_folder():
    ds = yaml.safe_load((PROVISIONING / "datasources" / "switchyard.yaml").read_text())
    source = ds["datasources"][0]
    assert ds["apiVersion"] == 1 and source["type"] == "prometheus" and source["uid"] == "prometheus"
    dash = yaml.safe_load((PROVISIONING / "dashboards" / "switchyard.yaml").read_text())
    provider = dash["providers"][0]
    assert dash["apiVersion"] == 1 and provider["type"] == "file" and provider["options"]["path"]


def test_promtool_checks_the_rules_and_the_config():
    out = subprocess.run([binary("promtool"), "check", "rules", *map(str, sorted(RULES.glob("*.yml")))],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([binary("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_of_every_alert_pass():
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    out = subprocess.run([binary("promtool"), "test", "rules", *map(str, tests)], capture_output=True, text=True,
                         cwd=PROMETHEUS)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {m for t in tests for m in re.findall(r"alertname: (\w+)", t.read_text())}
    assert tested == alerts(), f"alerts without a promtool test: {sorted(alerts() - tested)}"


def test_every_alert_is_documented():
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert not {a for a in alerts() if f"`{a}`" not in doc}


def alerts() -> set[str]:
    out = set()
    for f in RULES.glob("*.yml"):
        for group in yaml.safe_load(f.read_text())["groups"]:
            out |= {r["alert"] for r in group["rules"] if "alert" in r}
    return out


def test_every_dashboard_and_panel_is_documented():
    doc = (ROOT / "docs" / "operations.md").read_text()
    for path in FILES:
        board = json.loads(path.read_text())
        assert f"(`{path.name}`)" in doc, path.name
        missing = [p["title"] for p in board["panels"] if f"| {p['title']} | {p['description']} |" not in doc]
        assert not missing, f"{path.name}: panels not in docs/operations.md as tools/dashboards.py has them: {missing}"
