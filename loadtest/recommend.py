"""Choosing an instance type from measurements: capacity within a p99 target, the Pareto set, the cheapest fleet."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_FAILURE_SHARE = 0.01


@dataclass(frozen=True)
class Step:
    """One load step on one target: the figures Locust reported."""

    target: str
    users: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    failure_share: float


@dataclass(frozen=True)
class Capacity:
    """The most an instance type served within the latency target, and what it costs."""

    instance_type: str
    rps: float
    p99_ms: float
    hourly_usd: float | None

    @property
    def usd_per_million(self) -> float | None:
        if self.hourly_usd is None or self.rps <= 0:
            return None
        return self.hourly_usd / (self.rps * 3600) * 1_000_000


@dataclass(frozen=True)
class Recommendation:
    instance_type: str
    count: int
    hourly_usd: float
    headroom: float  # share of the fleet's capacity left at the peak rate
    capacity: Capacity


def capacity(steps: list[Step], p99_target_ms: float, hourly_usd: float | None) -> Capacity | None:
    """The best throughput among steps meeting the p99 target with under 1% failures; None if none did."""
    good = [s for s in steps if s.p99_ms <= p99_target_ms and s.failure_share <= MAX_FAILURE_SHARE and s.rps > 0]
    if not good:
        return None
    best = max(good, key=lambda s: (s.rps, -s.p99_ms))
    return Capacity(best.target, best.rps, best.p99_ms, hourly_usd)


def pareto(capacities: list[Capacity]) -> list[Capacity]:
    """Instance types no other beats on both cost per million inferences and p99."""
    priced = [c for c in capacities if c.usd_per_million is not None]
    return [c for c in priced if not any(
        o.usd_per_million <= c.usd_per_million and o.p99_ms <= c.p99_ms  # type: ignore[operator]
        and (o.usd_per_million < c.usd_per_million or o.p99_ms < c.p99_ms)  # type: ignore[operator]
        for o in priced)]


def recommend(capacities: list[Capacity], peak_rps: float, max_instances: int = 100) -> Recommendation:
    """The cheapest fleet (type and count) that serves `peak_rps` within the target; ties go to fewer
    instances, then the lower p99. Raises ValueError saying why when nothing qualifies."""
    if not capacities:
        raise ValueError("no instance type met the latency target at any load step; relax the p99 target or "
                         "measure larger instance types")
    options = []
    for c in capacities:
        if c.hourly_usd is None:
            continue
        count = max(1, math.ceil(peak_rps / c.rps))
        if count <= max_instances:
            options.append(Recommendation(c.instance_type, count, round(count * c.hourly_usd, 4),
                                          1 - peak_rps / (count * c.rps), c))
    if not options:
        raise ValueError(f"no measured instance type with a price in instances.yaml serves {peak_rps} req/s with "
                         f"at most {max_instances} instances")
    return min(options, key=lambda r: (r.hourly_usd, r.count, r.capacity.p99_ms))
