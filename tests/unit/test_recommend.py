"""Instance choice on hand-made measurement tables."""

from __future__ import annotations

import pytest

from loadtest.recommend import Capacity, Step, capacity, pareto, recommend


def step(target, users, rps, p99, failures=0.0):
    return Step(target, users, rps, p99 / 2, p99 * 0.8, p99, failures)


def test_capacity_is_the_best_step_within_target_and_failures():
    steps = [step("a", 1, 10, 20), step("a", 4, 35, 60), step("a", 16, 50, 400), step("a", 8, 45, 90, 0.02)]
    assert capacity(steps, 100, 1.0) == Capacity("a", 35, 60, 1.0)
    assert capacity(steps, 10, 1.0) is None


def test_cheapest_single_instance_wins():
    caps = [Capacity("big", 400, 50, 4.0), Capacity("small", 120, 80, 1.0)]
    best = recommend(caps, peak_rps=100)
    assert (best.instance_type, best.count, best.hourly_usd) == ("small", 1, 1.0)
    assert best.headroom == pytest.approx(1 - 100 / 120)


def test_multi_instance_answer_when_one_is_not_enough():
    caps = [Capacity("big", 400, 50, 4.0), Capacity("small", 120, 80, 1.0)]
    best = recommend(caps, peak_rps=1000)
    assert (best.instance_type, best.count, best.hourly_usd) == ("small", 9, 9.0)  # 3 x big would cost 12
    assert recommend(caps, peak_rps=1000, max_instances=5).instance_type == "big"


def test_ties_go_to_fewer_instances_then_lower_p99():
    caps = [Capacity("two-small", 100, 70, 1.0), Capacity("one-big", 200, 90, 2.0),
            Capacity("one-big-fast", 200, 40, 2.0)]
    best = recommend(caps, peak_rps=200)
    assert (best.instance_type, best.count) == ("one-big-fast", 1)


def test_no_instance_meets_the_target_is_a_clear_message():
    with pytest.raises(ValueError, match="no instance type met the latency target"):
        recommend([], peak_rps=10)
    with pytest.raises(ValueError, match="with a price in instances.yaml"):
        recommend([Capacity("unpriced", 100, 10, None)], peak_rps=10)


def test_pareto_set_drops_dominated_types():
    caps = [Capacity("a", 100, 50, 1.0), Capacity("b", 100, 40, 2.0), Capacity("c", 100, 60, 2.0),
            Capacity("d", 10, 10, None)]
    assert {c.instance_type for c in pareto(caps)} == {"a", "b"}
