"""The profiling and paired-run tools' arithmetic: py-spy's collapsed stacks folded into self and inclusive
time, and old-against-new rounds summarised as medians and paired changes."""

from __future__ import annotations

from pathlib import Path

from bench.paired import render, summarize
from bench.profile import top_frames


def test_collapsed_stacks_fold_into_self_and_inclusive_time(tmp_path: Path):
    f = tmp_path / "x.collapsed"
    f.write_text("process 1;thread (0x1);main (a.py:1);handle (b.py:2);decode (c.py:3) 6\n"
                 "main (a.py:1);handle (b.py:2) 3\n"
                 "main (a.py:1);handle (b.py:2);handle (b.py:2) 1\n"  # recursion counts once inclusive
                 " 5\n")  # an empty stack (in C, no Python frame) counts in the total only
    total, own, incl = top_frames(f, 10)
    assert total == 15
    assert dict(own) == {"decode (c.py:3)": 6, "handle (b.py:2)": 4}
    assert dict(incl) == {"main (a.py:1)": 10, "handle (b.py:2)": 10, "decode (c.py:3)": 6}


def run(c, rnd, tree, rps, cpu):
    return {"c": c, "round": rnd, "tree": tree, "rps": rps, "p50_ms": 1000 / rps, "p99_ms": 3000 / rps,
            "cpu_us": cpu, "errors": 0}


def test_paired_rounds_give_medians_and_the_change_within_each_round():
    runs = [run(64, 0, "old", 100, 2000), run(64, 0, "new", 110, 1800),
            run(64, 1, "new", 90, 1900), run(64, 1, "old", 80, 2100),
            run(64, 2, "old", 100, 2000), run(64, 2, "new", 95, 2050)]
    (row,) = summarize(runs)
    assert row["old"]["rps"] == 100 and row["new"]["rps"] == 95
    assert row["change_pct"]["rps"] == 10.0  # +10 %, +12.5 %, -5 %: the median
    assert row["new_better_rounds"]["rps"] == "2/3" and row["new_better_rounds"]["cpu_us"] == "2/3"
    assert "rps +10.0% (better in 2/3)" in render([row])


def test_samples_fold_by_module_and_by_the_component_that_called_the_library(tmp_path: Path):
    from bench.profile import by_module

    f = tmp_path / "x.collapsed"
    f.write_text("run (uvloop/__init__.py:92);_admit (services/policy/handlers.py:396);publish (nats/aio/client.py:1) 4\n"
                 "_apply (services/audit/store.py:590) 2\n"
                 " 1\n")
    total, leaves, components = by_module(f)
    assert total == 7
    assert dict(leaves) == {"nats": 4, "services/audit": 2, "(no Python frame: the loop in C)": 1}
    assert dict(components) == {"services/policy": 4, "services/audit": 2, "(no Python frame: the loop in C)": 1}


SHIM_CHECK = r"""
import http from 'node:http';
// What @hono/node-server does: a lighter global Response that keeps init.headers as given.
class Light {
  constructor(body, init) { this._headers = init?.headers instanceof Headers ? init.headers : new Headers(init?.headers); }
  get headers() { return this._headers; }
  static json() { return 'static kept'; }
}
Object.defineProperty(globalThis, 'Response', { value: Light });
const srv = http.createServer((q, s) => { s.writeHead(200, {'content-type': 'text/event-stream'}); s.end('data: x\n\n'); });
srv.listen(0, '127.0.0.1', async () => {
  const fetched = await fetch(`http://127.0.0.1:${srv.address().port}/`);
  const r = new Response(fetched.body, fetched);  // the gateway's streaming path
  r.headers.append('x-portkey-trace-id', '1');     // threw "immutable" without the shim
  console.log(JSON.stringify({type: r.headers.get('content-type'), added: r.headers.get('x-portkey-trace-id'),
                              statics: Response.json()}));
  srv.close();
});
"""


def test_the_portkey_shim_gives_a_response_built_from_a_fetched_one_mutable_headers(tmp_path: Path):
    import json
    import shutil
    import subprocess

    import pytest

    from bench.systems import PORTKEY_SHIM

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this machine (make bench needs it for the Portkey gateway)")
    script = tmp_path / "check.mjs"
    script.write_text(SHIM_CHECK)
    done = subprocess.run([node, "--import", str(PORTKEY_SHIM), str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"type": "text/event-stream", "added": "1", "statics": "static kept"}
    bare = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30)
    assert bare.returncode != 0 and "immutable" in bare.stderr  # the bug the shim is for


def test_job_intake_is_the_median_of_its_rounds_a_failed_round_counting_lowest():
    from bench.jobs import JobsResult, median_jobs

    runs = [JobsResult(ingest_rps=2900.0, accepted=1), JobsResult(ingest_rps=1400.0, accepted=2),
            JobsResult(ingest_rps=2100.0, accepted=3)]
    out = median_jobs(runs)
    assert out["ingest_rps"] == 2100.0 and out["accepted"] == 3
    assert out["rounds_ingest_rps"] == [2900.0, 1400.0, 2100.0]
    failed = median_jobs([JobsResult(ingest_rps=3000.0), JobsResult(failed="wrk died"), JobsResult(ingest_rps=1000.0)])
    assert failed["ingest_rps"] == 1000.0 and failed["rounds_ingest_rps"] == [3000.0, None, 1000.0]
    assert median_jobs([JobsResult(ingest_rps=5.0)])["ingest_rps"] == 5.0
