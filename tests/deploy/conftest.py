"""The deploy tests' tools: Helm 4, kubernetes-validate and the KEDA / Prometheus Operator schemas, installed by
``make tools-deploy`` into .tools/ (idempotent; ``make test`` depends on it, and this fixture runs it too so a
plain ``pytest`` works)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"


@dataclass(frozen=True)
class DeployTools:
    """Where the installed tools are."""

    helm: Path
    kubernetes_validate: Path
    node_modules: Path


@pytest.fixture(scope="session")
def deploy_tools() -> DeployTools:
    done = subprocess.run(["make", "-s", "tools-deploy"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make tools-deploy failed:\n{done.stdout}\n{done.stderr}"
    tools = DeployTools(helm=TOOLS / "bin" / "helm", kubernetes_validate=TOOLS / "venv" / "bin" / "kubernetes-validate",
                        node_modules=TOOLS / "npm" / "node_modules")
    for path in (tools.helm, tools.kubernetes_validate, tools.node_modules):
        assert path.exists(), f"{path} missing after make tools-deploy"
    return tools
