"""Every provider row through the full pipeline (gateway → policy → router → worker → audit) against its fake
upstream, speaking that provider's real wire format: sync, streaming, and a provider failure falling back."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml

from shared.natsd import NatsServer
from tests.fakes.providers import Fault, FakeProviders
from tests.support.api import sdk, wait_trace
from tests.support.system import make_settings, start_system

# provider name in the catalog → (adapter type, fake route family, upstream model, options)
PROVIDERS = {
    "fake-openai": ("openai", "openai", "gpt-4o-mini", {}),
    "fake-compat": ("openai-compatible", "openai", "llama-3.1-8b", {}),
    "fake-azure": ("azure", "azure", "my-gpt4o-deployment", {"api_version": "2024-10-21"}),
    "fake-anthropic": ("anthropic", "anthropic", "claude-sonnet-4-5", {}),
    "fake-gemini": ("gemini", "gemini", "gemini-2.5-flash", {}),
    "fake-mistral": ("mistral", "mistral", "mistral-small-latest", {}),
    "fake-bedrock": ("bedrock", "bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0",
                     {"region": "us-east-1", "credential_chain": False}),
}


def catalog_for(fakes: FakeProviders) -> dict:
    providers, models, aliases = [], [], {}
    for name, (kind, family, upstream, options) in PROVIDERS.items():
        spec = {"name": name, "type": kind, "base_url": fakes.base_url(family), "timeout_s": 10, "options": options}
        if kind == "bedrock":
            spec["options"] = {**options, "access_key_id": fakes.aws_access_key,
                               "secret_access_key": fakes.aws_secret}
        else:
            spec["api_key"] = fakes.api_key
        providers.append(spec)
        model = f"m-{name}"
        models.append({"name": model, "input_per_mtok": 1.0, "output_per_mtok": 2.0,
                       "capabilities": ["streaming", "tools", "json"],
                       "deployments": [{"provider": name, "upstream_model": upstream, "id": f"{name}/main"}]})
        aliases[f"safe-{name}"] = [model, "mock-1"]
    return {"providers": providers, "models": models, "aliases": aliases}


@pytest.fixture(scope="module")
async def provider_system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("providers")
    fakes = FakeProviders().start()
    catalog = Path(tmp) / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(catalog_for(fakes)))
    nats = NatsServer(Path(tmp) / "nats").start()
    system = await start_system(make_settings(nats, Path(tmp) / "data", catalog_path=str(catalog)))
    yield system, fakes
    await system.close()
    nats.stop()
    fakes.stop()


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_sync_through_pipeline(provider_system, provider):
    system, fakes = provider_system
    fakes.reset()
    raw = await sdk(system).chat.completions.with_raw_response.create(
        model=f"m-{provider}", messages=[{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "hello"}], max_tokens=50)
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello! How can I help you today?"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-switchyard-provider"] == provider
    assert len(fakes.requests_to(PROVIDERS[provider][1])) == 1
    trace = await wait_trace(system, raw.headers["x-request-id"], "succeeded")
    assert trace["attempts"][0]["provider"] == provider and trace["cost_usd"] > 0


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_stream_through_pipeline(provider_system, provider):
    system, fakes = provider_system
    fakes.reset()
    stream = await sdk(system).chat.completions.create(
        model=f"m-{provider}", messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True})
    text, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(text) == "Hello! How can I help you today?"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_provider_failure_falls_back(provider_system, provider):
    system, fakes = provider_system
    fakes.reset()
    fakes.fail(PROVIDERS[provider][1], Fault(status=503, kind="overloaded"))
    raw = await sdk(system).chat.completions.with_raw_response.create(
        model=f"safe-{provider}", messages=[{"role": "user", "content": "hello"}])
    assert raw.parse().model == "mock-1"
    trace = await wait_trace(system, raw.headers["x-request-id"], "succeeded")
    first = trace["attempts"][0]
    assert (first["provider"], first["outcome"]) == (provider, "failed")
    assert provider in first["error"]["message"]


# SSE events before the first text: Anthropic opens with message_start and content_block_start.
@pytest.mark.parametrize("provider, cut_after", [("fake-openai", 3), ("fake-anthropic", 5), ("fake-gemini", 2),
                                                 ("fake-bedrock", 4)])
async def test_cut_stream_surfaces_as_error(provider_system, provider, cut_after):
    """A cut after output reached the client is an error in the stream, never a quiet end."""
    system, fakes = provider_system
    fakes.reset()
    fakes.fail(PROVIDERS[provider][1], Fault(cut_after=cut_after))
    stream = await sdk(system).chat.completions.create(
        model=f"m-{provider}", messages=[{"role": "user", "content": "hello"}], stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
