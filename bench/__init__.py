"""``make bench``: Switchyard side by side with the bare upstream and the LiteLLM proxy.

``python -m bench`` installs what it needs (nginx-extras and wrk from
Debian's packages, LiteLLM into ``bench/.venv-litellm``), starts an nginx
upstream with fixed OpenAI bodies, measures each system in turn with wrk and
a small streaming client, prints one table with ratios to LiteLLM (1 worker)
and writes the raw results to ``bench/results/<timestamp>.json``.
``bench.attribution`` (what audit costs), ``bench.paired`` (old code against new)
and ``bench.profile`` (py-spy under load) share its parts. See ``bench/README.md``.
"""

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # every run's JSON (gitignored)


def save_results(results: dict, out: str | None, default_name: str) -> int:
    """Write a tool's raw results (``out``, or ``bench/results/<default_name>``), say where, and give the exit
    code: 130 when the run was interrupted, else 0."""
    path = Path(out) if out else RESULTS_DIR / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nraw results: {path}")
    return 130 if results.get("interrupted") else 0
