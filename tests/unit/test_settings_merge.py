"""Nested settings merge with their defaults: setting one variable changes that variable and nothing else.

Issue 17, defect 6: ``SWITCHYARD_AUDIT__CONSUMER__ACK_WAIT_S`` alone reset audit's consumer batch from 512 to
the class default 64, and an ack-wait for the workers raised their max_deliver from 5 to 10.
"""

from __future__ import annotations

from pydantic import BaseModel

from services.settings import Settings

def test_audit_ack_wait_keeps_the_batch(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_AUDIT__CONSUMER__ACK_WAIT_S", "7")
    consumer = Settings().audit.consumer
    assert consumer.ack_wait_s == 7
    assert (consumer.batch, consumer.concurrency, consumer.linger_s) == (512, 1, 0.05)


def test_worker_ack_wait_keeps_max_deliver(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_WORKERS__CONSUMER__ACK_WAIT_S", "3")
    consumer = Settings().workers.consumer
    assert (consumer.ack_wait_s, consumer.max_deliver) == (3, 5)


def test_a_whole_json_section_merges_too(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_AUDIT__CONSUMER", '{"max_deliver": 4}')
    consumer = Settings().audit.consumer
    assert (consumer.max_deliver, consumer.batch) == (4, 512)


def test_explicit_values_still_win(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_AUDIT__CONSUMER__BATCH", "32")
    assert Settings().audit.consumer.batch == 32


def _sections(model: BaseModel, path: tuple[str, ...] = ()):
    """Every nested section of ``model`` whose default differs from its class's own defaults."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            if value != type(value)():
                yield (*path, name), value
            yield from _sections(value, (*path, name))


def test_every_section_with_its_own_defaults_keeps_them(monkeypatch) -> None:
    """Whatever section a service declares with defaults of its own, one variable leaves the rest alone."""
    defaults = Settings()
    found = list(_sections(defaults))
    assert any(path == ("audit", "consumer") for path, _ in found)
    for path, section in found:
        # Change one field to another valid value; every other field must keep the section's own default.
        field = next(f for f in type(section).model_fields if isinstance(getattr(section, f), (int, float))
                     and not isinstance(getattr(section, f), bool))
        value = getattr(section, field) + 1
        var = "SWITCHYARD_" + "__".join(p.upper() for p in (*path, field))
        with monkeypatch.context() as m:
            m.setenv(var, str(value))
            got = Settings()
        for p in path:
            got = getattr(got, p)
        assert getattr(got, field) == value, var
        expected = section.model_copy(update={field: getattr(got, field)})
        assert got == expected, f"{var} changed its siblings: {got!r} != {expected!r}"

