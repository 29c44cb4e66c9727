"""Hit rate and false-hit rate of the semantic cache on the shipped paraphrase set, for a range of thresholds.

Runs the protocol of ``tests/fixtures/paraphrases.py`` (index each group's first
question, look up its paraphrases and the near misses) with vectors stored the
way the cache stores them (packed to signed bytes), and prints one row per
similarity threshold. By default the vectors come from the built-in mock
embeddings (what the tests and ``docs/cache.md`` use); with ``--url`` they come
from any embeddings model a running Switchyard serves, so an operator can pick
a team's ``cache_similarity`` for the model they configured:

    python tools/cache_report.py
    python tools/cache_report.py --url http://127.0.0.1:8080 --key sk-... --model text-embedding-3-small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.workers.adapters.base import DEFAULT_EMBED_DIMENSIONS  # noqa: E402
from services.workers.adapters.mock import vector_for  # noqa: E402
from shared.cache import cosine, pack, unpack  # noqa: E402
from tests.fixtures.paraphrases import GROUPS, NEAR_MISSES, evaluate  # noqa: E402

THRESHOLDS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def remote_vectors(url: str, key: str, model: str) -> dict[str, list[float]]:
    """Every text of the set embedded by ``model`` through a running gateway's /v1/embeddings (one request)."""
    import httpx

    texts = sorted({t for g in GROUPS for t in g} | set(NEAR_MISSES))
    r = httpx.post(url.rstrip("/") + "/v1/embeddings", json={"model": model, "input": texts},
                   headers={"authorization": f"Bearer {key}"}, timeout=120)
    r.raise_for_status()
    return {t: d["embedding"] for t, d in zip(texts, r.json()["data"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running Switchyard's base URL (default: the built-in mock embeddings)")
    ap.add_argument("--key", help="an API key for --url")
    ap.add_argument("--model", default="mock-embed-1", help="the embeddings model to ask --url for")
    args = ap.parse_args(argv)
    if args.url:
        if not args.key:
            ap.error("--url needs --key")
        vectors = remote_vectors(args.url, args.key, args.model)
        source = f"{args.model} via {args.url}"

        def embed(text: str) -> list[float]:
            return unpack(pack(vectors[text]))
    else:
        source = f"built-in mock embeddings ({DEFAULT_EMBED_DIMENSIONS} dimensions)"

        def embed(text: str) -> list[float]:
            return unpack(pack(vector_for(text, DEFAULT_EMBED_DIMENSIONS)))

    paraphrases = sum(len(g) - 1 for g in GROUPS)
    print(f"semantic cache on the paraphrase set: {len(GROUPS)} cached questions, {paraphrases} paraphrases, "
          f"{len(NEAR_MISSES)} near misses; vectors: {source}")
    print(f"{'threshold':>9}  {'hit rate':>8}  {'wrong entry':>11}  {'near-miss hits':>14}  {'false-hit rate':>14}")
    for threshold in THRESHOLDS:
        r = evaluate(embed, threshold, cosine)
        print(f"{threshold:>9.2f}  {r.hit_rate:>8.1%}  {r.wrong_hits:>11d}  "
              f"{f'{r.near_miss_hits}/{len(NEAR_MISSES)}':>14}  {r.false_hit_rate:>14.1%}")
    print("hit rate = paraphrases answered from their own question's entry / paraphrases; false-hit rate = "
          "(paraphrases answered from another entry + near misses answered at all) / lookups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
