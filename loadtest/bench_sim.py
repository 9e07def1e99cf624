"""Front-end capacity on simulated accelerators: the host CPU a request costs when the model costs none.

`serve --backend sim` (each forward waits fixed + per-token x padded tokens and returns constant scores;
reading, tokenising, batching and HTTP run for real), single-text requests from the log-normal length mix
(median 40 words), closed loop on loopback at concurrency 1 and 64. Layouts: one worker on one simulated
device (what `serve` runs on a one-GPU host) and two workers on two. Per layout: c=1 p50, c=64 req/s and
errors, the server's host CPU per request (master and workers, from psutil) and the load generator's own
(it shares the machine's cores).

    python loadtest/bench_sim.py [--model-dir DIR] [--duration 15] [--fixed-ms 0.5] [--per-token-us 2]

With `--against CHECKOUT` (another copy of the repository, e.g. a `git worktree` of an older commit) each chosen
layout runs from both checkouts at once, measured in alternating short windows at one concurrency: runs minutes
apart on a shared VM differ by more than most changes do, windows seconds apart share the host's weather.

    python loadtest/bench_sim.py --against /tmp/old --only "2 devices" [--rounds 8] [--window 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_server import serve, text_mix  # noqa: E402
from loadtest.closed_loop import run_closed_loop  # noqa: E402

LAYOUTS = {  # name: (simulated devices, serve --layout)
    "workers: 1 worker, 1 device": (1, "workers"),
    "workers: 2 workers, 2 devices": (2, "workers"),
    "engines: front ends on every core, 1 device": (1, "engines"),
    "engines: front ends on every core, 2 devices": (2, "engines"),
}


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server's whole process tree so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def levels(process, port: int, texts: list[str], duration: float, concurrencies=(1, 64)) -> dict:
    """Warm the running server, run the closed loop at each concurrency with its host CPU per request, stop it."""
    url = f"http://127.0.0.1:{port}"
    try:
        run_closed_loop(url, texts, 4, 2.0)  # warm connections and caches
        rows = {}
        for concurrency in concurrencies:
            before = server_cpu_s(process.pid)
            result = run_closed_loop(url, texts, concurrency, duration)
            row = result.summary()
            row["server_cpu_ms_per_req"] = round(1000 * (server_cpu_s(process.pid) - before)
                                                 / max(1, result.requests), 3)
            rows[f"c{concurrency}"] = row
            print("   ", row, flush=True)
        return rows
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def sim_flags(devices: int, layout: str, args) -> list[str]:
    return ["--backend", "sim", "--layout", layout, "--sim-devices", str(devices),
            "--sim-fixed-ms", str(args.fixed_ms), "--sim-per-token-us", str(args.per_token_us)]


def measure(model_dir: Path, devices: int, layout: str, args, texts: list[str], log_path: Path) -> dict:
    port = 18600 + os.getpid() % 1000
    return levels(serve(model_dir, port, sim_flags(devices, layout, args), log_path), port, texts, args.duration)


def interleaved(devices: int, layout: str, args, texts: list[str], work: Path) -> dict:
    """This checkout and the one at args.against, both serving at once, measured in alternating windows."""
    flags = sim_flags(devices, layout, args)
    checkouts = {"this": REPO, "against": args.against.resolve()}
    servers = {}
    try:
        for offset, (name, checkout) in enumerate(checkouts.items()):
            env = dict(os.environ)  # each checkout's `serving` ahead of whatever the environment has installed
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
            port = 18600 + os.getpid() % 1000 + offset
            servers[name] = (serve(args.model_dir, port, flags, work / f"serve-{name}.log", env), port)
        totals = {name: {"requests": 0, "errors": 0, "cpu_s": 0.0, "seconds": 0.0} for name in servers}
        for _, port in servers.values():
            run_closed_loop(f"http://127.0.0.1:{port}", texts, 4, 2.0)  # warm connections and caches
        for round_ in range(args.rounds):
            for name in sorted(servers, reverse=bool(round_ % 2)):  # each goes first every other round
                process, port = servers[name]
                before = server_cpu_s(process.pid)
                result = run_closed_loop(f"http://127.0.0.1:{port}", texts, args.concurrency, args.window)
                total = totals[name]
                total["cpu_s"] += server_cpu_s(process.pid) - before
                total["requests"] += result.requests
                total["errors"] += result.errors
                total["seconds"] += result.seconds
        rows = {name: {"req_per_s": round(t["requests"] / t["seconds"], 1), "errors": t["errors"],
                       "server_cpu_ms_per_req": round(1000 * t["cpu_s"] / max(1, t["requests"]), 3)}
                for name, t in totals.items()}
        print("   ", rows, flush=True)
        return rows
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(60)


def real_models_on_cpu(args, texts: list[str], work: Path) -> None:
    """The demo models on this CPU (serve's default backend), layout workers against layout engines, c=1/8/32:
    how the CPU-only default (workers) was chosen."""
    port = 18600 + os.getpid() % 1000
    print("| model | layout | c=1 req/s | c=1 p50 ms | c=8 req/s | c=32 req/s | server CPU ms/req (c=32) |")
    print("|---|---|---|---|---|---|---|")
    for family in ("roberta", "rnn"):
        for layout in ("workers", "engines"):
            process = serve(REPO / "model_artifacts" / "demo" / family, port, ["--layout", layout],
                            work / f"serve-{family}-{layout}.log")
            rows = levels(process, port, texts, args.duration, (1, 8, 32))
            print(f"| demo {family} | {layout} | {rows['c1']['req_per_s']} | {rows['c1']['p50_ms']} | "
                  f"{rows['c8']['req_per_s']} | {rows['c32']['req_per_s']} | {rows['c32']['server_cpu_ms_per_req']} |",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "model_artifacts" / "demo" / "roberta",
                        help="a model folder: only its text side runs")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    parser.add_argument("--fixed-ms", type=float, default=0.5)
    parser.add_argument("--per-token-us", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("bench_sim.json"))
    parser.add_argument("--only", default="", help="run the layouts whose name contains this")
    parser.add_argument("--real-cpu", action="store_true", help="instead: the demo models on this CPU, both layouts")
    parser.add_argument("--against", type=Path, help="another checkout to run beside this one (interleaved A/B)")
    parser.add_argument("--rounds", type=int, default=8, help="with --against: windows per checkout")
    parser.add_argument("--window", type=float, default=3.0, help="with --against: seconds per window")
    parser.add_argument("--concurrency", type=int, default=64, help="with --against: the one concurrency measured")
    args = parser.parse_args(argv)
    texts = text_mix(2000)
    work = Path(tempfile.mkdtemp(prefix="toxserve-bench-sim-"))
    if args.real_cpu:
        real_models_on_cpu(args, texts, work)
        return
    report = {"conditions": {"model_dir": str(args.model_dir), "fixed_ms": args.fixed_ms,
                             "per_token_us": args.per_token_us, "duration_s": args.duration,
                             "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                             "python": platform.python_version()},
              "layouts": {}}
    parser_layouts = [name for name in LAYOUTS if not args.only or args.only in name]
    if args.against:
        print(f"| layout | checkout | c={args.concurrency} req/s | errors | server CPU ms/req |")
        print("|---|---|---|---|---|")
        for name in parser_layouts:
            rows = interleaved(*LAYOUTS[name], args, texts, work)
            for checkout, row in rows.items():
                print(f"| {name} | {checkout} | {row['req_per_s']} | {row['errors']} | "
                      f"{row['server_cpu_ms_per_req']} |", flush=True)
        return
    for name in parser_layouts:
        devices, layout = LAYOUTS[name]
        print(name, flush=True)
        report["layouts"][name] = measure(args.model_dir, devices, layout, args, texts,
                                          work / f"serve-{layout}-{devices}.log")
    args.out.write_text(json.dumps(report, indent=2))
    print("| layout | c=1 p50 ms | c=64 req/s | c=64 errors | server CPU ms/req (c=64) | client CPU ms/req |")
    print("|---|---|---|---|---|---|")
    for name, rows in report["layouts"].items():
        print(f"| {name} | {rows['c1']['p50_ms']} | {rows['c64']['req_per_s']} | {rows['c64']['errors']} | "
              f"{rows['c64']['server_cpu_ms_per_req']} | {rows['c64']['client_cpu_ms_per_req']} |")


if __name__ == "__main__":
    main()
