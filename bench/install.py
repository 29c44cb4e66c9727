"""Installs what the benchmark needs when it is missing: nginx-extras and wrk (apt), LiteLLM (own venv), Portkey (npm).

Everything is non-interactive and idempotent: a tool already on ``PATH`` (or
a LiteLLM virtualenv that already imports) is left alone. A failed install is
reported with its reason and the benchmark goes on with the systems it can
still measure.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
PORTKEY_DIR = BENCH_DIR / ".portkey"  # npm prefix of the Portkey AI gateway
PORTKEY_PACKAGE = "@portkey-ai/gateway@1.15"
NPM_TIMEOUT_S = 900
APT_TIMEOUT_S = 900
PIP_TIMEOUT_S = 1500


@dataclass
class Tools:
    """Where each external tool is, or why it is not available."""

    nginx: str | None = None
    wrk: str | None = None
    litellm: str | None = None  # path of the ``litellm`` console script in its own venv
    litellm_python: str | None = None
    node: str | None = None
    portkey: str | None = None  # the gateway's build/start-server.js under bench/.portkey
    problems: dict[str, str] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Run an install command; (ok, last lines of output)."""
    log("$ " + " ".join(cmd))
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env, text=True)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f}s"
    except OSError as exc:
        return False, str(exc)
    tail = "\n".join(p.stdout.strip().splitlines()[-8:])
    return p.returncode == 0, tail


def _nginx_binary() -> str | None:
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _nginx_has_echo(nginx: str) -> bool:
    """nginx-extras loads the echo module dynamically; ``nginx -V`` or the modules dir shows it."""
    mods = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
    if mods.exists():
        return True
    try:
        out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "echo" in (out.stdout + out.stderr)


def ensure_apt(tools: Tools) -> None:
    """nginx (with the echo module, from nginx-extras) and wrk from Debian's packages."""
    nginx = _nginx_binary()
    want = []
    if nginx is None or not _nginx_has_echo(nginx):
        want.append("nginx-extras")
    if shutil.which("wrk") is None:
        want.append("wrk")
    if want:
        if shutil.which("apt-get") is None:
            reason = "apt-get not found (not a Debian system?)"
            for pkg in want:
                tools.problems[pkg] = reason
        else:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            ok, out = _run(["apt-get", "update"], APT_TIMEOUT_S, env)
            if not ok:
                log(f"apt-get update failed (trying the install anyway):\n{out}")
            # --no-install-recommends keeps it small; policy-rc.d is not needed: we never use the system service.
            ok, out = _run(["apt-get", "install", "-y", "--no-install-recommends", *want], APT_TIMEOUT_S, env)
            if not ok:
                log(f"apt-get install {' '.join(want)} failed:\n{out}")
                for pkg in want:
                    tools.problems[pkg] = f"apt-get install failed: {out.splitlines()[-1] if out else '?'}"
            _stop_system_nginx()
    nginx = _nginx_binary()
    if nginx and _nginx_has_echo(nginx):
        tools.nginx = nginx
    elif nginx:
        tools.problems.setdefault("nginx-extras", "nginx is installed but without the echo module")
    else:
        tools.problems.setdefault("nginx-extras", "nginx not installed")
    tools.wrk = shutil.which("wrk")
    if tools.wrk is None:
        tools.problems.setdefault("wrk", "wrk not installed")


def _stop_system_nginx() -> None:
    """Installing nginx may start Debian's own service on port 80; the bench does not need it.

    Only the service the package just started is stopped (through the init
    script / systemctl that owns it), never an nginx this script did not install.
    """
    if not Path("/run/nginx.pid").exists():
        return
    for cmd in (["systemctl", "stop", "nginx"], ["service", "nginx", "stop"]):
        if shutil.which(cmd[0]):
            ok, _ = _run(cmd, 60)
            if ok:
                return


def _litellm_works(python: Path) -> bool:
    if not python.exists():
        return False
    try:
        p = subprocess.run([str(python), "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                           timeout=180, env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def ensure_litellm(tools: Tools) -> None:
    """``pip install 'litellm[proxy]'`` into bench/.venv-litellm (created with ``python3 -m venv``)."""
    python = LITELLM_VENV / "bin" / "python"
    script = LITELLM_VENV / "bin" / "litellm"
    if not (script.exists() and _litellm_works(python)):
        if not python.exists():
            # Debian's python3 needs python3-venv for ensurepip; the project's own interpreter (which made
            # .venv) is the fallback.
            ok, out = False, "no python3"
            for base in dict.fromkeys(filter(None, (shutil.which("python3"), sys.executable))):
                ok, out = _run([base, "-m", "venv", "--clear", str(LITELLM_VENV)], 300)
                if ok:
                    break
            if not ok:
                tools.problems["litellm"] = f"python3 -m venv failed: {out}"
                log(tools.problems["litellm"])
                return
        ok, out = _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "litellm[proxy]"], PIP_TIMEOUT_S)
        if not ok:
            tools.problems["litellm"] = f"pip install 'litellm[proxy]' failed: {out.splitlines()[-1] if out else '?'}"
            log(f"{tools.problems['litellm']}\n{out}")
            return
        if not (script.exists() and _litellm_works(python)):
            tools.problems["litellm"] = "litellm installed but its proxy does not import"
            log(tools.problems["litellm"])
            return
    tools.litellm = str(script)
    tools.litellm_python = str(python)


def _portkey_script() -> Path:
    return PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def ensure_portkey(tools: Tools) -> None:
    """``npm install @portkey-ai/gateway`` into bench/.portkey (Node from the machine; the package is pinned)."""
    node = shutil.which("node")
    if node is None:
        tools.problems["portkey"] = "node not found (the Portkey gateway runs on Node.js)"
        return
    script = _portkey_script()
    if not script.exists():
        npm = shutil.which("npm")
        if npm is None:
            tools.problems["portkey"] = "npm not found"
            return
        PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
        ok, out = _run([npm, "install", "--silent", "--no-audit", "--no-fund", "--no-save", "--no-package-lock",
                        "--prefix", str(PORTKEY_DIR), PORTKEY_PACKAGE], NPM_TIMEOUT_S)
        if not ok or not script.exists():
            tools.problems["portkey"] = f"npm install {PORTKEY_PACKAGE} failed: {out.splitlines()[-1] if out else '?'}"
            log(f"{tools.problems['portkey']}\n{out}")
            return
    tools.node, tools.portkey = node, str(script)


def version_of_portkey() -> str | None:
    try:
        meta = json.loads((_portkey_script().parent.parent / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("version")


def ensure_all(need_litellm: bool = True, need_portkey: bool = True) -> Tools:
    """Install what is missing; never raises for a failed install."""
    tools = Tools()
    ensure_apt(tools)
    if need_litellm:
        ensure_litellm(tools)
    if need_portkey:
        ensure_portkey(tools)
    for what, why in tools.problems.items():
        log(f"unavailable: {what}: {why}")
    return tools


def tools(skip_install: bool, need_litellm: bool = True, need_portkey: bool = True) -> Tools:
    """What the run can use: installed where missing, or (``skip_install``) only what is already here."""
    if not skip_install:
        return ensure_all(need_litellm=need_litellm, need_portkey=need_portkey)
    found = Tools(nginx=_nginx_binary(), wrk=shutil.which("wrk"))
    if _portkey_script().exists() and shutil.which("node"):
        found.node, found.portkey = shutil.which("node"), str(_portkey_script())
    elif need_portkey:
        found.problems["portkey"] = "not installed (--skip-install)"
    script = LITELLM_VENV / "bin" / "litellm"
    if script.exists():
        found.litellm, found.litellm_python = str(script), str(LITELLM_VENV / "bin" / "python")
    elif need_litellm:
        found.problems["litellm"] = "not installed (--skip-install)"
    return found


def version_of_litellm(python: str | None) -> str | None:
    if not python:
        return None
    try:
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _cmd_version(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (p.stdout + p.stderr).strip().splitlines()
    return out[0].strip() if out else None


def machine_info(tools: Tools) -> dict:
    """The machine, the versions of everything measured, and the commit: kept with every result."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")).split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass
    from shared.natsd import nats_server_binary

    try:
        nats = _cmd_version([nats_server_binary(), "--version"])
    except FileNotFoundError:
        nats = None
    repo = BENCH_DIR.parent
    commit = _cmd_version(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_version(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "kernel": platform.release(),
        "os": _cmd_version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(), "nats_server": nats,
        "litellm": version_of_litellm(tools.litellm_python),
        "portkey_gateway": version_of_portkey() if tools.portkey else None,
        "node": _cmd_version([tools.node, "--version"]) if tools.node else None,
        "nginx": _cmd_version([tools.nginx, "-v"]) if tools.nginx else None,
        "wrk": _cmd_version([tools.wrk, "-v"]) if tools.wrk else None,
        "switchyard_commit": (commit or "?") + ("+dirty" if dirty else ""),
    }


def unusable(tools: Tools) -> str | None:
    """Why nothing can be measured with these tools (no nginx with the echo module, or no wrk), or None."""
    if tools.nginx is not None and tools.wrk is not None:
        return None
    return "cannot run without nginx (with the echo module) and wrk: " + "; ".join(
        f"{k}: {v}" for k, v in tools.problems.items())


if __name__ == "__main__":
    t = ensure_all()
    print(t)
