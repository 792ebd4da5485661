"""CPU cost of each Redis provider operation, per item: the client's and the server's.

Throughput figures move with whatever else the machine runs; CPU time moves much less, so this
is the figure to compare between two versions of the scripts on a shared machine. The server's
CPU comes from ``INFO cpu`` (user + sys of the redis-server process), the client's from
``time.process_time()``; both are divided by the items in the batch.

    uv run python benchmarks/redis_cpu.py [--batch 500] [--rounds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.interfaces import (
    CancelRequest,
    ClaimRequest,
    LeaseRef,
    OutgoingMessage,
    ScheduleRequest,
)
from dtimeout.model import OrphanPolicy, TimeoutMessage
from dtimeout.providers.redis.plugin import open_store, open_transport
from dtimeout.testing.servers import RedisServer

DAY = 86_400_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    n = args.batch
    with tempfile.TemporaryDirectory(prefix="dtimeout-cpu-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            raw = redis.Redis(port=server.port)
            url = f"redis://127.0.0.1:{server.port}/0?prefix=cpu&fuse=false"
            store, transport = open_store(url, SYSTEM_CLOCK), open_transport(url, SYSTEM_CLOCK)
            # the usual set-up: one URL for both roles, schedule and message in one script
            fused_url = f"redis://127.0.0.1:{server.port}/0?prefix=cpufused"
            fused_store = open_store(fused_url, SYSTEM_CLOCK)
            fused_transport = open_transport(fused_url, SYSTEM_CLOCK)
            totals: dict[str, list[float]] = {}

            def server_cpu() -> float:
                info = raw.info("cpu")
                return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

            def measure(label: str, fn: Callable[[], Any]) -> Any:
                s0, c0 = server_cpu(), time.process_time()
                out = fn()
                c1, s1 = time.process_time(), server_cpu()
                row = totals.setdefault(label, [0.0, 0.0])
                row[0] += s1 - s0
                row[1] += c1 - c0
                return out

            for r in range(args.rounds):
                now = SYSTEM_CLOCK.now_ms() - 10
                keys = [f"r{r}-{i}" for i in range(n)]
                reqs = [ScheduleRequest("k", k, now, {"n": i}, DAY) for i, k in enumerate(keys)]
                outs = measure("schedule", lambda reqs=reqs: store.schedule(reqs))
                msgs = [
                    OutgoingMessage(
                        o.timeout.idempotency_key,
                        TimeoutMessage("k", o.timeout.key, 1, now, o.timeout.payload).encode(),
                        now,
                    )
                    for o in outs
                ]
                measure("send", lambda msgs=msgs: transport.send(msgs))
                measure(
                    "fused schedule (record + message)",
                    lambda reqs=reqs: fused_store.schedule_and_send(fused_transport, reqs),
                )
                got = measure("receive", lambda: transport.receive(n, 0, 30))
                claims = [
                    ClaimRequest(
                        TimeoutMessage.decode(d.body), f"o{i}", 30_000, 5, OrphanPolicy.FIRE, DAY
                    )
                    for i, d in enumerate(got)
                ]
                measure("claim", lambda claims=claims: store.claim(claims))
                leases = [LeaseRef("k", c.message.key, 1, c.owner) for c in claims]
                measure("complete", lambda leases=leases: store.complete(leases))
                measure("ack", lambda got=got: transport.ack(got))
                cancels = [CancelRequest("k", k, "x") for k in keys]
                measure("cancel", lambda cancels=cancels: store.cancel(cancels))
            for provider in (store, transport, fused_store, fused_transport):
                provider.close()
        finally:
            server.stop()
    items = n * args.rounds
    print(f"| operation (batch of {n}) | server CPU µs/item | client CPU µs/item |")
    print("|---|---|---|")
    for label, (srv, cli) in totals.items():
        print(f"| {label} | {srv * 1e6 / items:.1f} | {cli * 1e6 / items:.1f} |")
    fire = ("receive", "claim", "complete", "ack")
    srv = sum(totals[k][0] for k in fire) * 1e6 / items
    cli = sum(totals[k][1] for k in fire) * 1e6 / items
    print(f"| one fire (receive+claim+complete+ack) | {srv:.1f} | {cli:.1f} |")


if __name__ == "__main__":
    main()
