"""Load generation with wrk: a generated Lua script POSTs a JSON body with a bearer key; results come back as JSON.

wrk is closed-loop: ``-c N`` keeps N requests in flight, each connection
sending its next request when the previous answered. The Lua ``done`` hook
prints one ``WRKJSON {...}`` line with the counts, error kinds and latency
percentiles (microseconds in wrk, milliseconds here). For the async-jobs run
the ``response`` hook also keeps the ids of accepted (202) jobs, which the
main thread collects from every wrk thread.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_DONE = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local ids = {}
  if COLLECT_IDS then
    for _, t in ipairs(threads) do
      local s = t:get("id_blob")
      if s and #s > 0 then table.insert(ids, s) end
    end
  end
  local accepted = 0
  for _, t in ipairs(threads) do accepted = accepted + (t:get("accepted") or 0) end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"accepted":%d,"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"max":%.1f,"mean":%.1f,"ids":"%s"}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, accepted,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, table.concat(ids, ",")))
end
"""

_COLLECT = r"""
accepted = 0
local ids = {}
function response(status, headers, body)
  if status == ACCEPT_STATUS then
    accepted = accepted + 1
    if COLLECT_IDS then
      local id = string.match(body, '"id"%s*:%s*"([^"]+)"')
      if id then ids[#ids + 1] = id end
      id_blob = nil
    end
  end
end
-- thread:get() reads globals when the run is over; join lazily (once per read is fine).
setmetatable(_G, {__index = function(t, k)
  if k == "id_blob" then return table.concat(ids, ",") end
end})
"""


def lua_script(path: str, body: dict, key: str | None, accept_status: int | None = None,
               collect_ids: bool = False, headers: dict[str, str] | None = None) -> str:
    """The Lua for one target: method, path, headers and body, plus the reporting hooks."""
    lines = ['wrk.method = "POST"', f'wrk.path = "{path}"', 'wrk.headers["Content-Type"] = "application/json"']
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    lines.append(f"wrk.body = [==[{json.dumps(body, separators=(',', ':'))}]==]")
    lines.append(f"COLLECT_IDS = {'true' if collect_ids else 'false'}")
    lines.append(f"ACCEPT_STATUS = {accept_status or 0}")
    script = "\n".join(lines) + "\n"
    if accept_status:
        script += _COLLECT
    return script + _DONE


@dataclass
class WrkResult:
    """One wrk run (latencies in milliseconds)."""

    connections: int
    duration_s: float
    requests: int = 0
    rps: float = 0.0
    errors: int = 0
    non2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    failed: str | None = None
    ids: list[str] = field(default_factory=list)

    def public(self) -> dict:
        d = asdict(self)
        d.pop("ids")
        return d


def run_wrk(wrk: str, url: str, body: dict, key: str | None, connections: int, duration_s: float,
            threads: int | None = None, timeout_s: float = 10.0, accept_status: int | None = None,
            collect_ids: bool = False, headers: dict[str, str] | None = None) -> WrkResult:
    """Run wrk once against ``url`` and parse its ``WRKJSON`` line."""
    parts = urlsplit(url)
    threads = threads or (1 if connections < 512 else 2)
    threads = max(1, min(threads, connections))
    res = WrkResult(connections=connections, duration_s=duration_s)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(parts.path, body, key, accept_status, collect_ids, headers))
        script = f.name
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", f"{timeout_s:g}s",
           "-s", script, f"{parts.scheme}://{parts.netloc}"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 60)
    except subprocess.TimeoutExpired:
        res.failed = "wrk did not finish in time"
        return res
    finally:
        Path(script).unlink(missing_ok=True)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        res.failed = f"wrk exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"
        return res
    d = json.loads(line[len("WRKJSON "):])
    res.requests = d["requests"]
    secs = d["duration_us"] / 1e6 or duration_s
    res.socket_errors = {k: d[k] for k in ("connect", "read", "write", "timeout") if d[k]}
    res.non2xx = d["status"]
    res.errors = d["status"] + sum(res.socket_errors.values())
    ok = res.requests - d["status"]  # wrk counts a request when a response arrived (any status)
    res.rps = ok / secs
    res.accepted = d["accepted"]
    if ok > 0:
        res.p50_ms, res.p90_ms, res.p99_ms, res.p999_ms = (d[k] / 1000 for k in ("p50", "p90", "p99", "p999"))
        res.max_ms, res.mean_ms = d["max"] / 1000, d["mean"] / 1000
    if d["ids"]:
        res.ids = d["ids"].split(",")
    return res
