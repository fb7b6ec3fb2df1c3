"""The fault plan of the transient-fault tests (faults.FaultPlan), on request sequences alone:
which request gets which fault, and that a step's retry is never met by the same fault."""

from __future__ import annotations

from faults import MODES, FaultPlan


def test_every_nth_request_gets_the_next_mode_and_once_rules_fire_first():
    plan = FaultPlan(every=3, once=[(lambda m, t: t == "/b/commit", "timeout")])
    got = [plan.decide("PUT", f"/b/part-{i}") for i in range(9)]
    assert got == [None, None, "503", None, None, "500", None, None, "reset"]
    assert plan.decide("PUT", "/b/commit") == "timeout"  # once, before the count
    assert plan.decide("PUT", "/b/commit") is None


def test_a_retried_attempt_is_not_met_by_the_same_fault():
    """An attempt of 21 requests (every=7 times the 3 modes) ending in a commit: counted like
    any other request, the commit of every attempt would get the same "reset"."""
    attempt = [("GET", f"/t/_delta_log/read-{i}") for i in range(20)] + [("PUT", "/t/_delta_log/2.json")]
    plan = FaultPlan(every=7)
    for method, target in attempt[:-1]:  # other requests before the first attempt's commit
        plan.decide(method, target)
    plan._fired = 2  # ... and faults: the commit is the 21st counted request, on "reset"
    assert plan.decide(*attempt[-1]) == MODES[2] == "reset"
    retried = [plan.decide(method, target) for method, target in attempt]
    assert retried[-1] is None  # the retry's commit goes through
    assert plan.decide(*attempt[-1]) is None  # and never gets an `every` fault again
