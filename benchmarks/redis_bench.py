"""Reproduce the Redis figures of issue 3: ``dtimeout bench`` next to ``redis-benchmark``.

Starts its own ``redis-server`` on a free loopback port (never 6379) in a temporary directory,
measures the server with ``redis-benchmark`` for scale (50 clients, pipelined, and one client —
the last is what a single-threaded Python client can hope for), then runs ``dtimeout bench``
against it, optionally with a million far-future timeouts parked to show the consumer's memory
does not grow with what is pending. Prints a Markdown table; ``--json PATH`` keeps everything.

    uv run python benchmarks/redis_bench.py                 # about a minute
    uv run python benchmarks/redis_bench.py --pending 1000000

Numbers belong to the machine they were measured on; run on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dtimeout.testing.servers import RedisServer

REDIS_BENCHMARK_RUNS = {
    "50 clients": ["-c", "50", "-n", "200000", "-t", "ping,set,get,zadd"],
    "50 clients, pipeline 16": ["-c", "50", "-n", "500000", "-P", "16", "-t", "set,zadd"],
    "1 client": ["-c", "1", "-n", "30000", "-t", "ping,set,zadd"],
}


def redis_benchmark(port: int) -> dict[str, dict[str, float]]:
    """requests/s per command for each run (``redis-benchmark --csv``)."""
    out: dict[str, dict[str, float]] = {}
    for label, args in REDIS_BENCHMARK_RUNS.items():
        proc = subprocess.run(
            ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "--csv", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        rows: dict[str, float] = {}
        for line in proc.stdout.splitlines():
            cells = [c.strip('"') for c in line.split(",")]
            if len(cells) >= 2 and cells[0] != "test":
                rows[cells[0]] = float(cells[1])
        out[label] = rows
    # a one-item Lua script, the unit every dtimeout transition is made of
    lua = ["EVAL", "return redis.call('TIME')", "0"]
    proc = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--csv",
            "-c",
            "1",
            "-n",
            "30000",
            *lua,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    for line in proc.stdout.splitlines()[1:]:
        cells = [c.strip('"') for c in line.split(",")]
        out["1 client"]["EVAL (TIME)"] = float(cells[1])
    return out


def dtimeout_bench(url: str, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dtimeout", "--transport", url, "--store", url, "bench"]
    proc = subprocess.run(
        [*cmd, "--json", *extra], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"dtimeout bench failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def table(rb: dict[str, dict[str, float]], runs: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    for label, rows in rb.items():
        for command, rps in rows.items():
            lines.append(f"| redis-benchmark {label}: {command} | {rps:,.0f} req/s |")
    for name, report in runs.items():
        r = report["results"]
        pre = f"dtimeout bench ({name})"
        if "single" in r:
            lines.append(
                f"| {pre}: schedule, single calls | {r['single']['schedule_per_s']:,.0f}/s |"
            )
            lines.append(f"| {pre}: cancel, single calls | {r['single']['cancel_per_s']:,.0f}/s |")
        if "batched" in r:
            b = r["batched"]
            lines.append(f"| {pre}: schedule_many | {b['schedule_many_per_s']:,.0f}/s |")
            lines.append(f"| {pre}: cancel_many | {b['cancel_many_per_s']:,.0f}/s |")
        if "fire" in r:
            lines.append(f"| {pre}: sustained fire | {r['fire']['fired_per_s']:,.0f}/s |")
        if "lateness" in r:
            la = r["lateness"]
            ms = la["lateness_ms"]
            lines.append(
                f"| {pre}: lateness p50/p95/p99/max at {la['offered_per_s']:,.0f}/s offered | "
                f"{ms['p50']:.0f} / {ms['p95']:.0f} / {ms['p99']:.0f} / {ms['max']:.0f} ms |"
            )
        if "pending" in r:
            lines.append(f"| {pre}: pending while consuming | {r['pending']['pending']:,} |")
        c = r.get("consumer", {})
        if c:
            lines.append(f"| {pre}: round trips per fired | {c['round_trips_per_fired']} |")
            lines.append(f"| {pre}: consumer peak RSS | {c['peak_rss_mb']} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=0, help="also run with N parked timeouts")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--skip-redis-benchmark", action="store_true")
    parser.add_argument("bench_args", nargs="*", help="extra `dtimeout bench` options after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dtimeout-bench-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            url = f"redis://127.0.0.1:{server.port}/0"
            load = os.getloadavg()
            rb = {} if args.skip_redis_benchmark else redis_benchmark(server.port)
            runs = {"default": dtimeout_bench(url, list(args.bench_args))}
            if args.pending:
                started = time.monotonic()
                runs[f"{args.pending:,} pending"] = dtimeout_bench(
                    url + "?prefix=pending",
                    ["--pending", str(args.pending), "--phases", "fire", "--count", "20000"],
                )
                runs[f"{args.pending:,} pending"]["seconds"] = round(time.monotonic() - started)
        finally:
            server.stop()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cores: {os.cpu_count()}"
    )
    print(table(rb, runs))
    if args.json:
        args.json.write_text(json.dumps({"redis_benchmark": rb, "dtimeout": runs}, indent=2))


if __name__ == "__main__":
    main()
