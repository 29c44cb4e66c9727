"""Small builders for events in unit tests."""

from __future__ import annotations

import time

from shared.canonical import ChatRequest, Message
from shared.events import CompletionRequested, RequestAdmitted, RequestContext


def ctx(deadline_in: float = 60.0, **kw) -> RequestContext:
    now = time.time()
    values = dict(tenant="t1", team="team-a", key_id="k1", origin="gw1", deadline=now + deadline_in, received_at=now)
    values.update(kw)
    return RequestContext(**values)


def chat(model: str = "mock-1", text: str = "hello", **kw) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **kw)


def requested(request: ChatRequest | None = None, rid: str = "req_1", **ctx_kw) -> CompletionRequested:
    return CompletionRequested(event_id=f"{rid}.requested", request_id=rid, ctx=ctx(**ctx_kw),
                               request=request or chat())


def admitted(request: ChatRequest | None = None, rid: str = "req_1", team: str = "team-a", deadline_in: float = 60.0,
             **kw) -> RequestAdmitted:
    return RequestAdmitted(event_id=f"{rid}.admitted", request_id=rid, ctx=ctx(deadline_in=deadline_in, team=team),
                           request=request or chat(), **kw)
