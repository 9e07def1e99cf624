"""Sweep targets with Locust in rising steps, then report latency, throughput, cost and the instance to pick.

Each target is `LABEL=URL` (any host's /invocations) or `LABEL=sagemaker:ENDPOINT[@REGION]`; the label
names an instance type in instances.yaml (or, to tune one machine, a server setting). A target's sweep
stops when p99 passes the target or failures pass 1%. Bounded: steps x seconds per target.

    python -m loadtest.runner --target local-2vcpu=http://127.0.0.1:8080 --users 1,4,16 --step-seconds 20 \
        --p99-ms 250 --peak-rps 100 --out loadtest/results/local
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import yaml

from loadtest.recommend import MAX_FAILURE_SHARE, Capacity, Step, capacity, pareto, recommend

HERE = Path(__file__).resolve().parent
CATALOGUE = HERE / "instances.yaml"


def locust_step(label: str, target: str, users: int, seconds: float, env: dict) -> Step:
    """One headless Locust run at `users` concurrent users; figures from its aggregated stats row."""
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "step"
        command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(users),
                   "-r", str(users), "-t", f"{int(seconds)}s", "--csv", str(prefix), "--only-summary",
                   "--loglevel", "WARNING", "--stop-timeout", "5"]
        environment = {**os.environ, **env}
        if target.startswith("sagemaker:"):
            endpoint, _, region = target.removeprefix("sagemaker:").partition("@")
            environment.update(LOADTEST_ENDPOINT=endpoint, LOADTEST_REGION=region or "us-east-1")
            command.append("SageMakerUser")
        else:
            command += ["--host", target, "InvocationsUser"]
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=seconds + 60)
        stats = prefix.parent / "step_stats.csv"
        if not stats.exists():
            raise RuntimeError(f"locust wrote no stats for {label}: {result.stderr[-1500:]}")
        rows = list(csv.DictReader(stats.open()))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    count, failures = int(total["Request Count"]), int(total["Failure Count"])
    return Step(label, users, float(total["Requests/s"]) * (1 - failures / count if count else 0),
                float(total["50%"]), float(total["90%"]), float(total["99%"]), failures / count if count else 1.0)


def sweep(label: str, target: str, users: list[int], seconds: float, p99_ms: float, env: dict, log) -> list[Step]:
    steps = []
    for n in users:
        step = locust_step(label, target, n, seconds, env)
        steps.append(step)
        log(f"{label} users={n}: {step.rps:.1f} req/s ok, p50 {step.p50_ms:.0f} p99 {step.p99_ms:.0f} ms, "
            f"failures {step.failure_share:.1%}")
        if step.p99_ms > p99_ms or step.failure_share > MAX_FAILURE_SHARE:
            break
    return steps


def plots(out: Path, steps: list[Step], capacities: list[Capacity], front: list[Capacity]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(s.target for s in steps):
        mine = [s for s in steps if s.target == label]
        axis.plot([s.rps for s in mine], [s.p99_ms for s in mine], marker="o", label=f"{label} p99")
        axis.plot([s.rps for s in mine], [s.p50_ms for s in mine], marker=".", linestyle=":", label=f"{label} p50")
    axis.set_xlabel("throughput (successful req/s)")
    axis.set_ylabel("latency (ms)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "latency_vs_throughput.png", dpi=90)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    priced = [c for c in capacities if c.usd_per_million is not None]
    for c in priced:
        axis.scatter(c.p99_ms, c.usd_per_million, color="tab:red" if c in front else "tab:grey")
        axis.annotate(c.instance_type, (c.p99_ms, c.usd_per_million), fontsize=7)
    axis.set_xlabel("p99 at capacity (ms)")
    axis.set_ylabel("USD per million requests")
    axis.set_title("red: Pareto set" if priced else "no priced instance types measured")
    figure.tight_layout()
    figure.savefig(out / "cost_vs_p99.png", dpi=90)
    plt.close(figure)
    return ["latency_vs_throughput.png", "cost_vs_p99.png"]


def report(out: Path, steps: list[Step], catalogue: dict, conditions: dict, p99_ms: float, peak_rps: float) -> str:
    labels = list(dict.fromkeys(s.target for s in steps))
    capacities = [c for c in (capacity([s for s in steps if s.target == label], p99_ms,
                                       (catalogue.get(label) or {}).get("hourly_usd")) for label in labels) if c]
    front = pareto(capacities)
    files = plots(out, steps, capacities, front)
    best = None
    try:
        best = recommend(capacities, peak_rps)
        verdict = (f"**{best.count} x {best.instance_type}** serves {peak_rps} req/s within p99 {p99_ms} ms for "
                   f"${best.hourly_usd:.2f}/hour, using {1 - best.headroom:.0%} of the fleet's measured capacity "
                   f"({best.capacity.rps:.1f} req/s per instance at p99 {best.capacity.p99_ms:.0f} ms).")
    except ValueError as exc:
        verdict = f"No recommendation: {exc}."
    lines = ["# Load test report", "", *(f"- {k}: {v}" for k, v in conditions.items()), "",
             "| target | users | req/s (ok) | p50 ms | p90 ms | p99 ms | failures |", "|---|---|---|---|---|---|---|",
             *(f"| {s.target} | {s.users} | {s.rps:.1f} | {s.p50_ms:.0f} | {s.p90_ms:.0f} | {s.p99_ms:.0f} | "
               f"{s.failure_share:.1%} |" for s in steps), "",
             "| instance type | capacity within p99 (req/s) | p99 ms | $/hour | $ per million requests | Pareto |",
             "|---|---|---|---|---|---|",
             *(f"| {c.instance_type} | {c.rps:.1f} | {c.p99_ms:.0f} | "
               f"{'n/a' if c.hourly_usd is None else c.hourly_usd} | "
               f"{'n/a' if c.usd_per_million is None else f'{c.usd_per_million:.3f}'} | {'yes' if c in front else ''} |"
               for c in capacities), "", "## Recommendation", "", verdict, "", *(f"![{f}]({f})" for f in files), ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    with (out / "steps.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(asdict(steps[0]))) if steps else None
        if writer:
            writer.writeheader()
            writer.writerows(asdict(s) for s in steps)
    recommendation = None if best is None else {"instance_type": best.instance_type, "count": best.count,
                                                 "hourly_usd": best.hourly_usd, "capacity_rps": best.capacity.rps}
    (out / "report.json").write_text(json.dumps({"conditions": conditions, "steps": [asdict(s) for s in steps],
                                                 "verdict": verdict, "recommendation": recommendation}, indent=2))
    return verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True, help="LABEL=URL or LABEL=sagemaker:NAME[@REGION]")
    parser.add_argument("--users", default="1,4,16,64", help="concurrent users per step, rising")
    parser.add_argument("--step-seconds", type=float, default=30)
    parser.add_argument("--p99-ms", type=float, default=250, help="latency target")
    parser.add_argument("--peak-rps", type=float, default=100, help="peak request rate to serve")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--corpus", type=Path, help="CSV/JSONL of texts [default: the demo corpus]")
    parser.add_argument("--conditions", default="", help="free text for the report: model, backend, settings")
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE)
    parser.add_argument("--out", type=Path, default=Path("loadtest-report"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"LOADTEST_TEXTS_PER_REQUEST": str(args.texts_per_request)}
    if args.corpus:
        env["LOADTEST_CORPUS"] = str(args.corpus)
    users = [int(u) for u in args.users.split(",")]
    steps: list[Step] = []
    for spec in args.target:
        label, _, target = spec.partition("=")
        if not label or not target.startswith(("http://", "https://", "sagemaker:")):
            raise ValueError(f"target {spec!r}: expected LABEL=http(s)://HOST:PORT or LABEL=sagemaker:NAME[@REGION]")
        steps += sweep(label, target, users, args.step_seconds, args.p99_ms, env, print)
    conditions = {"payload": f"{args.texts_per_request} text(s) per request from {args.corpus or 'the demo corpus'}",
                  "steps": f"users {args.users}, {args.step_seconds:.0f} s each, closed loop (no wait)",
                  "latency target": f"p99 <= {args.p99_ms} ms, failures <= {MAX_FAILURE_SHARE:.0%}",
                  "peak rate": f"{args.peak_rps} req/s", "notes": args.conditions or "-"}
    print(report(args.out, steps, yaml.safe_load(args.catalogue.read_text()), conditions, args.p99_ms,
                 args.peak_rps))


if __name__ == "__main__":
    main()
