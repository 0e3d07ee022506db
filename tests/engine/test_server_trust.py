"""TokenGate on its own: only connections whose hello carried the token are let in, and
the engine remembers a bounded number of them (the most recent)."""

from __future__ import annotations

from engine.server.trust import TokenGate


def test_only_routes_that_presented_the_token_are_let_in_and_they_are_bounded():
    gate = TokenGate("t0k", max_routes=2)
    assert not gate.check(b"r0", "nope") and not gate.check(b"r0", None)
    assert not gate.lets_in(b"r0")
    assert gate.check(b"r1", "t0k") and gate.check(b"r2", "t0k")
    assert gate.check(b"r1", "t0k")                 # r1 said hello again: the most recent
    assert gate.check(b"r3", "t0k")                 # the oldest, r2, is forgotten
    assert [gate.lets_in(r) for r in (b"r1", b"r2", b"r3")] == [True, False, True]


def test_without_a_token_every_route_is_let_in():
    gate = TokenGate(None, max_routes=1)
    assert gate.lets_in(b"any") and gate.check(b"any", "whatever")
