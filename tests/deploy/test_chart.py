"""The Helm chart (deploy/helm/switchyard), proven with the real tools.

``helm lint --strict``; ``helm template`` with every values file in ci/ (minimal with external NATS, the
in-chart NATS cluster, KEDA, production-like), each rendered set validated by ``kubernetes-validate --strict``
(core kinds) and by the @kubernetes-models schemas (KEDA ScaledObject, ServiceMonitor), strictly; ``helm
install --dry-run=client`` with Helm 4. Then the rendered manifests are read and the invariants checked:
every target of services/targets.py has a Deployment; every Deployment has probes, resources, the security
context and its NATS credentials; only the gateway is reachable from outside; the catalog checksum follows
the catalog; values.schema.json refuses wrong types and unknown keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.targets import BY_NAME, TARGETS
from tests.deploy.conftest import ROOT, DeployTools

CHART = ROOT / "deploy" / "helm" / "switchyard"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
KUBERNETES = "1.35.0"
# The nats-jetstream scaler's parameters (KEDA docs): anything else in a trigger's metadata is a typo.
NATS_JETSTREAM_PARAMS = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
                         "activationLagThreshold", "useHttps"}


def helm(tools: DeployTools, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(tools.helm), *args], cwd=ROOT, capture_output=True, text=True)
    if ok:
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done


def render(tools: DeployTools, *args: str, chart: Path = CHART) -> list[dict]:
    out = helm(tools, "template", "sy", str(chart), "--namespace", "switchyard", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def targets_of(deployment: dict) -> list[str]:
    args = container(deployment)["args"]
    return args[args.index("--target") + 1].split(",")


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def values_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="module")
def rendered(deploy_tools) -> dict[str, list[dict]]:
    return {p.name: render(deploy_tools, "-f", str(p)) for p in VALUES}


def test_there_are_the_four_values_sets():
    names = {p.name for p in VALUES}
    assert {"minimal-external-nats-values.yaml", "nats-cluster-values.yaml", "keda-values.yaml",
            "production-values.yaml"} <= names


def test_helm_lint_strict(deploy_tools):
    helm(deploy_tools, "lint", "--strict", str(CHART))
    for values in VALUES:
        helm(deploy_tools, "lint", "--strict", str(CHART), "-f", str(values))


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_rendered_manifests_pass_the_kubernetes_schemas(deploy_tools, rendered, values, tmp_path):
    docs = rendered[values.name]
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    manifest = tmp_path / "core.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    done = subprocess.run([str(deploy_tools.kubernetes_validate), "--strict", "--quiet", "-k", KUBERNETES,
                           str(manifest)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Couldn't find schema" not in done.stdout + done.stderr
    crds = [d for d in docs if d["kind"] in CRD_KINDS]
    if crds:
        done = subprocess.run(["node", str(Path(__file__).parent / "crd_validate.mjs"), str(deploy_tools.node_modules)],
                              input=json.dumps(crds), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_crd_validator_is_strict(deploy_tools):
    """The custom-resource check refuses a wrong type and an unknown field, so its passes mean something."""
    bad = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
           "spec": {"scaleTargetRef": {"name": "d", "colour": "red"}, "minReplicaCount": "2",
                    "triggers": [{"type": "cpu", "metadata": {"value": "50"}}]}}
    done = subprocess.run(["node", str(Path(__file__).parent / "crd_validate.mjs"), str(deploy_tools.node_modules)],
                          input=json.dumps([bad]), capture_output=True, text=True)
    assert done.returncode == 1
    assert "/spec/minReplicaCount" in done.stdout and "unknown field /spec/scaleTargetRef/colour" in done.stdout


def test_keda_scales_every_consumer_on_its_lag(rendered):
    docs = rendered["keda-values.yaml"]
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in by_kind(docs, "ScaledObject")}
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert scaled and set(scaled) <= set(deployments)
    for name, so in scaled.items():
        triggers = [t for t in so["spec"]["triggers"] if t["type"] == "nats-jetstream"]
        assert triggers, name
        for t in triggers:
            assert set(t["metadata"]) <= NATS_JETSTREAM_PARAMS, t["metadata"]
            assert t["metadata"]["stream"] == "SWITCHYARD"
        assert "replicas" not in deployments[name]["spec"], "KEDA owns the replica count"
    consumers = {t["metadata"]["consumer"] for so in scaled.values() for t in so["spec"]["triggers"]
                 if t["type"] == "nats-jetstream"}
    from services.audit.service import DURABLE as AUDIT
    from services.policy.service import BATCH_DURABLE as POLICY_BATCH, DURABLE as POLICY, SETTLE_DURABLE
    from services.router.service import BATCH_DURABLE as ROUTER_BATCH, DURABLE as ROUTER
    from services.workers.service import durable
    from shared.events import LANES

    providers = values_of(CHART / "ci" / "keda-values.yaml")["workers"]["providers"]
    assert consumers == {AUDIT, POLICY, POLICY_BATCH, SETTLE_DURABLE, ROUTER, ROUTER_BATCH,
                         *(durable(p, lane) for p in providers for lane in LANES)}
    # The gateway consumes nothing: it keeps a CPU HPA.
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert hpas == {"sy-switchyard-gateway"}


def test_helm_install_dry_run_client(deploy_tools):
    for values in VALUES:
        done = helm(deploy_tools, "install", "sy", str(CHART), "--dry-run=client", "--namespace", "switchyard",
                    "-f", str(values))
        assert "STATUS: pending-install" in done.stdout
        assert "admin-key" in done.stdout  # NOTES tell how to get the admin key


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_every_target_of_the_table_has_a_deployment(rendered, values):
    deployments = by_kind(rendered[values.name], "Deployment")
    run = [t for d in deployments for t in targets_of(d)]
    providers = values_of(values).get("workers", {}).get("providers") or {"mock": {}}
    for target in TARGETS:
        if target.arg:
            for provider in providers:
                assert f"{target.name}:{provider}" in run, f"no Deployment runs {target.name}:{provider}"
        else:
            assert target.name in run, f"no Deployment runs {target.name}"
    assert len(run) == len(set(run)), "a target runs in two Deployments"


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_every_deployment_is_probed_bounded_locked_down_and_authenticated(rendered, values):
    docs = rendered[values.name]
    auth = next((s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-nats-auth")), None)
    for d in by_kind(docs, "Deployment"):
        name, c, pod = d["metadata"]["name"], container(d), d["spec"]["template"]["spec"]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert c[probe]["httpGet"]["path"] == path, (name, probe)
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        assert c["resources"]["limits"]["memory"], name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        env = env_of(d)
        assert env["SWITCHYARD_NATS__USER"]["value"], name
        ref = env["SWITCHYARD_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        if auth is not None:  # the chart's own Secret: the key must be in it
            assert ref["name"] == auth["metadata"]["name"] and ref["key"] in auth["data"], (name, ref)
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > \
            float(env["SWITCHYARD_SHUTDOWN_GRACE_S"]["value"]), name


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_nats_users_and_key_secret_follow_the_tables(rendered, values):
    """Each Deployment connects as the bus role of its targets; every one has the key secret (a process refuses the
    public default), only those whose targets need the key index get the admin key."""
    from shared.bus.permissions import role_name

    for d in by_kind(rendered[values.name], "Deployment"):
        targets, env = targets_of(d), env_of(d)
        assert env["SWITCHYARD_NATS__USER"]["value"] == role_name(targets)
        needs_keys = any("keys" in BY_NAME[t.partition(":")[0]].needs for t in targets)
        assert env["SWITCHYARD_KEY_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "key-secret"
        assert ("SWITCHYARD_ADMIN_KEY" in env) == needs_keys, d["metadata"]["name"]
        if "gateway" not in targets:  # probes and scrapes reach the ops port from outside the pod
            assert env["SWITCHYARD_METRICS_HOST"]["value"] == "0.0.0.0"


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_only_the_gateway_is_reachable_from_outside(rendered, values):
    docs = rendered[values.name]
    gateway_svc = "sy-switchyard-gateway"
    for s in by_kind(docs, "Service"):
        if s["metadata"]["name"] != gateway_svc:
            assert s["spec"].get("type", "ClusterIP") == "ClusterIP", s["metadata"]["name"]
    for ing in by_kind(docs, "Ingress"):
        backends = {p["backend"]["service"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
        assert backends == {gateway_svc}
        assert all(p["path"].startswith("/v1") for r in ing["spec"]["rules"] for p in r["http"]["paths"])
    policies = by_kind(docs, "NetworkPolicy")
    if not values_of(values).get("networkPolicy", {}).get("enabled"):
        assert not policies
        return
    selected = set()
    for np in policies:
        component = np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        selected.add(component)
        for rule in np["spec"]["ingress"]:
            sources = rule.get("from")
            if component != "gateway":
                assert sources, f"{component} takes traffic from anywhere"
                for src in sources:
                    assert "ipBlock" not in src, component
            if component == "nats" and any(p["port"] == "client" for p in rule["ports"]):
                # Only Switchyard pods of this release reach NATS's client port.
                (src,) = sources
                assert src["podSelector"]["matchLabels"]["switchyard.io/nats-client"] == "true"
                assert src["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "sy"
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in by_kind(docs, "Deployment")}
    assert components <= selected, "a component without a NetworkPolicy"
    for d in by_kind(docs, "Deployment"):
        assert d["spec"]["template"]["metadata"]["labels"]["switchyard.io/nats-client"] == "true"


def test_the_catalog_checksum_rolls_the_pods_when_the_catalog_changes(deploy_tools):
    def checksums(*args: str) -> dict[str, str]:
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/catalog"]
                for d in by_kind(render(deploy_tools, *args), "Deployment")}

    model = {"version": 1, "extends_builtin": True, "models": [
        {"name": "m-1", "input_per_mtok": 1, "output_per_mtok": 2, "deployments": [{"provider": "mock"}]}]}
    same_a, same_b = checksums(), checksums()
    changed = checksums("--set-json", f"catalog={json.dumps(model)}")
    assert same_a == same_b
    assert set(changed) == set(same_a)
    assert all(changed[n] != same_a[n] for n in same_a), "a Deployment would not roll on a catalog change"
    assert len(set(same_a.values())) == 1


@pytest.mark.parametrize("bad", [
    ["--set", "gateway.replicas=two"],
    ["--set", "gateway.replicaz=2"],
    ["--set", "nats.cluster.encryption.cipher=aes"],
    ["--set", "workers.providers.openai.replicas=-1"],
    ["--set-json", 'nats.streamReplicas="3"'],
    ["--set", "unknownTopLevel=1"],
], ids=["wrong-type", "unknown-key", "unknown-nested-key", "negative", "string-for-int", "unknown-top-level"])
def test_values_schema_refuses_wrong_types_and_unknown_keys(deploy_tools, bad):
    done = helm(deploy_tools, "template", "sy", str(CHART), *bad, ok=False)
    assert done.returncode != 0
    assert "schema" in done.stderr.lower(), done.stderr


def test_grafana_dashboards_come_from_the_files_without_a_chart_edit(deploy_tools, tmp_path):
    chart = tmp_path / "switchyard"
    shutil.copytree(CHART, chart)  # symlinks followed: the dashboards and NATS users come along
    (chart / "dashboards" / "made-up-board.json").write_text(json.dumps({"title": "Made up", "panels": []}))
    dashboards = [d for d in render(deploy_tools, chart=chart) if d["kind"] == "ConfigMap"
                  and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    files = sorted(p.name for p in (chart / "dashboards").glob("*.json"))
    assert sorted(k for d in dashboards for k in d["data"]) == files
    made_up = next(d for d in dashboards if "made-up-board.json" in d["data"])
    assert json.loads(made_up["data"]["made-up-board.json"])["title"] == "Made up"


def test_the_in_chart_nats_cluster(rendered):
    docs = rendered["nats-cluster-values.yaml"]
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["volumeClaimTemplates"]
    (config,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-nats-config")]
    conf = config["data"]["nats.conf"]
    assert "cipher: chachapoly" in conf and "key: $JS_KEY" in conf
    assert "authorization {" in conf and "user: route" in conf
    from tools.nats_auth import render as rendered_users

    assert rendered_users().split("\n", 1)[1].strip() in conf  # the users, exactly as the table renders them
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    routes = args[args.index("--routes") + 1].split(",")
    assert len(routes) == 3 and all("$(ROUTE_PASSWORD)@" in r for r in routes)
    for d in by_kind(docs, "Deployment"):
        env = env_of(d)
        assert env["SWITCHYARD_NATS__REPLICAS"]["value"] == "3" and env["SWITCHYARD_NATS__KV_REPLICAS"]["value"] == "3"
        assert env["SWITCHYARD_NATS__URL"]["value"] == "nats://sy-switchyard-nats:4222"


def test_helm_test_hook_sends_a_completion(rendered):
    for values, docs in rendered.items():
        (pod,) = [p for p in by_kind(docs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
        script = pod["spec"]["containers"][0]["args"][0]
        assert "/v1/chat/completions" in script, values


def test_prometheus_rules_come_from_the_rule_files(rendered):
    rules = by_kind(rendered["production-values.yaml"], "PrometheusRule")
    files = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    assert len(rules) == len(files)
    for f in files:
        groups = yaml.safe_load(f.read_text())["groups"]
        assert any(r["spec"]["groups"] == groups for r in rules), f.name
