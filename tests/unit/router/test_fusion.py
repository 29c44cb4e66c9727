"""Stage fusion (``services.router.service.Router``): a policy in the router's process routes at admission.

The routing result must be published before the admission that says it was routed, the marked admission goes
to a subject no router reads, a routing error leaves the request to the router consumer, and a marked
admission that reaches the consumer anyway is not routed twice.
"""

from __future__ import annotations

from services.router.handlers import RouterDeps, StaticHealth
from services.router.service import Router
from services.router.settings import RouterSettings
from shared.bus import Delivery
from shared.catalog import load_catalog
from shared.errors import InvalidRequest
from shared.events import AttemptDispatched, BudgetReserved, CompletionFailed
from shared.telemetry import Metrics
from tests.support.catalogs import ROUTER_CATALOG
from tests.support.events import admitted, chat, ctx

CATALOG = load_catalog(ROUTER_CATALOG)


def router(catalog=CATALOG) -> Router:
    s = RouterSettings()
    return Router(RouterDeps(settings=s, catalog=catalog, health=StaticHealth(), instance="router-test"),
                  Metrics(), s.consumer)


class Recorder:
    """A publish that records what it was given, in order."""

    def __init__(self) -> None:
        self.published: list = []

    async def __call__(self, events) -> None:
        self.published.extend(events)


MODEL = next(iter(CATALOG.models))


async def test_fuse_publishes_the_first_attempt_before_returning_the_marked_admission():
    event = admitted(chat(MODEL))
    reserved = BudgetReserved(event_id="req_1.budget.reserved", request_id="req_1", ctx=ctx(), amount_usd=0.1,
                              scopes=["team.t.a"])
    publish = Recorder()
    out = await router().fuse([reserved, event], publish)
    [dispatched] = publish.published
    assert isinstance(dispatched, AttemptDispatched) and dispatched.event_id == "req_1.attempt.1"
    assert dispatched.target.model == MODEL
    assert out[0] is reserved and out[1].routed_by == "router-test"
    assert out[1].subject() == "sy.evt.admitted.routed" and event.subject() == "sy.evt.admitted"
    assert out[1].request == event.request


async def test_a_routing_error_leaves_the_admission_to_the_router_consumer():
    class Broken:
        def view(self):
            raise RuntimeError("health unreadable")

        def note_dispatch(self, *a):
            raise RuntimeError("health unreadable")

    s = RouterSettings()
    broken = Router(RouterDeps(settings=s, catalog=CATALOG, health=Broken(), instance="router-x"), Metrics(),
                    s.consumer)
    publish = Recorder()
    event = admitted(chat(MODEL))
    out = await broken.fuse([event], publish)
    assert publish.published == [] and out == [event] and out[0].subject() == "sy.evt.admitted"


async def test_nothing_to_fuse_without_an_admission():
    denied = CompletionFailed(event_id="req_1.done", request_id="req_1", ctx=ctx(),
                              error=InvalidRequest("no").info())
    publish = Recorder()
    assert await router().fuse([denied], publish) == [denied] and publish.published == []


async def test_the_consumer_does_not_route_a_marked_admission_again():
    r = router()
    marked = admitted(chat(MODEL), routed_by="router-other")
    assert await r.handle(marked, Delivery(num_delivered=1, headers={}, stream_seq=1)) == []
    [dispatched] = await r.handle(admitted(chat(MODEL)), Delivery(num_delivered=1, headers={}, stream_seq=2))
    assert isinstance(dispatched, AttemptDispatched)
