"""The gateway's ASGI front: hot endpoints answered before FastAPI, with the same OpenAI error shape."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from services.gateway.app import HotPaths, Route, install_error_handlers, route_table
from services.ops import json_response
from shared.errors import InvalidRequest


class FakeGateway:
    """Handlers that answer, refuse, or fail the way a real one could."""

    async def chat_completions(self, request):
        raise InvalidRequest("bad body", param="messages")

    async def messages(self, request):
        raise RuntimeError("a bug")

    async def embeddings(self, request):
        return json_response({"ok": True})

    submit_job = embeddings

    async def get_job(self, request, job_id):
        return json_response({"id": job_id})


def app() -> HotPaths:
    fastapi = FastAPI()
    install_error_handlers(fastapi)

    @fastapi.get("/other")
    async def other():
        raise RuntimeError("a bug behind FastAPI")

    gw = FakeGateway()
    hot = [Route("POST", "/v1/chat/completions", gw.chat_completions, "", hot=True),
           Route("POST", "/v1/messages", gw.messages, "", hot=True),
           Route("POST", "/v1/embeddings", gw.embeddings, "", hot=True),
           Route("POST", "/v1/jobs", gw.submit_job, "", hot=True),
           Route("GET", "/v1/jobs/{job_id}", gw.get_job, "", hot=True)]
    return HotPaths(fastapi, hot)


async def test_hot_paths_answer_and_fail_like_the_fastapi_handlers():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app(), raise_app_exceptions=False),
                                 base_url="http://t") as c:
        refused = await c.post("/v1/chat/completions", json={})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "messages" and refused.json()["error"]["message"] == "bad body"
        bug, behind = await c.post("/v1/messages", json={}), await c.get("/other")
        assert bug.status_code == behind.status_code == 500
        assert bug.json() == behind.json()  # one mapping serves both paths
        assert (await c.get("/v1/jobs/job_abc")).json() == {"id": "job_abc"}
        assert (await c.post("/v1/embeddings", json={})).json() == {"ok": True}
        assert (await c.get("/v1/jobs/job_abc/extra")).status_code == 404  # not a hot path: FastAPI's 404


class Anything:
    """Stands in for the gateway's handler objects: every attribute is this object again."""

    def __getattr__(self, name):
        return self


def test_the_route_table_marks_exactly_the_hot_endpoints():
    table = route_table(Anything())
    assert {(r.method, r.path) for r in table if r.hot} == {
        ("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("POST", "/v1/embeddings"),
        ("POST", "/v1/completions"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}")}
    assert len({(r.method, r.path) for r in table}) == len(table)  # one handler per method and path
    HotPaths(FastAPI(), table)  # every hot route has a shape the fast dispatch can match


async def test_hot_requests_are_counted_while_answered_failures_included():
    """The count a batch lane in the same process yields to (shared/bus/serving.py): up while a hot request is
    being answered, down once its answer is sent, whether it succeeded or failed."""
    from shared.bus.serving import Serving

    seen: list[int] = []
    serving = Serving(busy_at=2, window=1)

    class Gateway(FakeGateway):
        async def embeddings(self, request):
            seen.append(serving.active)
            return json_response({"ok": True})

    gw = Gateway()
    hot = HotPaths(FastAPI(), [Route("POST", "/v1/embeddings", gw.embeddings, "", hot=True),
                               Route("POST", "/v1/messages", gw.messages, "", hot=True)], serving=serving)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hot, raise_app_exceptions=False),
                                 base_url="http://t") as c:
        assert (await c.post("/v1/embeddings", json={})).status_code == 200
        assert (await c.post("/v1/messages", json={})).status_code == 500
    assert seen == [1] and serving.active == 0
