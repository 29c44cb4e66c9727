"""``make bench``: Switchyard side by side with the bare upstream and the LiteLLM proxy.

``python -m bench`` installs what it needs (nginx-extras and wrk from
Debian's packages, LiteLLM into ``bench/.venv-litellm``), starts an nginx
upstream with fixed OpenAI bodies, measures each system in turn with wrk and
a small streaming client, prints one table with ratios to LiteLLM (1 worker)
and writes the raw results to ``bench/results/<timestamp>.json``.
See ``bench/README.md``.
"""

from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # every run's JSON (gitignored)
