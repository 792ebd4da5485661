"""SQS request cost and rates of dtimeout's ``sqs://`` transport, next to bare boto3 loops.

Runs against moto's server (started here, on a free loopback port) with fake credentials:

    uv run python benchmarks/sqs_cost.py [--count 1000] [--delay 2] [--concurrency 10] [--json]

Three runs on fresh queues of the same server, each scheduling ``count`` timeouts due ``delay``
seconds later and consuming them all with one consumer:

* ``dtimeout``     - ``Timeouts.schedule_many`` + one ``Consumer`` (store: memory, or --store);
* ``bare-seed``    - the seed's pattern: one SendMessage, one ReceiveMessage, one DeleteMessage
                     per message;
* ``bare-batched`` - the batched floor: SendMessageBatch, ReceiveMessage of 10,
                     DeleteMessageBatch.

Requests are counted at botocore's ``before-send`` event (every HTTP request, empty long polls
included), divided by the timeouts fired. moto is a local emulator: the rates say how much
work dtimeout adds per timeout, not what AWS would sustain. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import boto3

from dtimeout.app import ScheduleItem, Timeouts
from dtimeout.clock import SYSTEM_CLOCK, to_ms
from dtimeout.model import DueTimeout
from dtimeout.providers.memory import MemoryStore
from dtimeout_sqs.testing import FAKE_CREDENTIALS, MotoServer

REGION = "us-east-1"


def _counter(client: Any) -> Counter[str]:
    counts: Counter[str] = Counter()

    def count(event_name: str = "", **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.sqs", count)
    return counts


def _new_queue(admin: Any) -> tuple[str, str]:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    return name, admin.create_queue(QueueName=name)["QueueUrl"]


def run_dtimeout(
    server: MotoServer, admin: Any, count: int, delay: float, concurrency: int, store: str | None
) -> dict[str, Any]:
    name, _ = _new_queue(admin)
    url = f"sqs://{name}?endpoint_url={server.endpoint_url}&region={REGION}"
    timeouts = Timeouts(url, store or MemoryStore(SYSTEM_CLOCK))
    lateness: list[int] = []
    fired_at: list[int] = []

    @timeouts.handler("bench")
    def fire(t: DueTimeout) -> None:
        now = SYSTEM_CLOCK.now_ms()
        lateness.append(now - to_ms(t.due_at))
        fired_at.append(now)

    start_requests = timeouts.transport.stats().get("requests", 0)
    items = [ScheduleItem("bench", f"k{i}", after=timedelta(seconds=delay)) for i in range(count)]
    t0 = time.perf_counter()
    scheduled = timeouts.schedule_many(items)
    schedule_s = time.perf_counter() - t0
    first_due = min(t.due_at_ms for t in scheduled)
    consumer = timeouts.consumer(concurrency=concurrency, wait_seconds=1.0)
    deadline = time.monotonic() + delay + 120
    consumer.run(stop_when=lambda: len(fired_at) >= count or time.monotonic() > deadline)
    stats = timeouts.transport.stats()
    timeouts.close()
    by_op = {
        k.split(".", 1)[1]: v
        for k, v in stats.items()
        if k.startswith("requests.")
        and k not in ("requests.GetQueueUrl", "requests.GetQueueAttributes")
    }
    return _result(
        "dtimeout",
        count,
        len(fired_at),
        schedule_s,
        (max(fired_at) - first_due) / 1000 if fired_at else 0.0,
        by_op,
        lateness,
        extra={"start_requests": start_requests, "hops": stats.get("hops", 0)},
    )


def run_bare(
    server: MotoServer, admin: Any, count: int, delay: float, batched: bool
) -> dict[str, Any]:
    _, queue_url = _new_queue(admin)
    client = boto3.client("sqs", endpoint_url=server.endpoint_url, region_name=REGION)
    counts = _counter(client)
    delay_s = int(delay)
    body = json.dumps({"kind": "bench", "key": "k", "payload": None})
    t0 = time.perf_counter()
    first_due = time.time() + delay_s
    if batched:
        for start in range(0, count, 10):
            entries = [
                {"Id": str(i), "MessageBody": body, "DelaySeconds": delay_s}
                for i in range(start, min(start + 10, count))
            ]
            client.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
    else:
        for _ in range(count):
            client.send_message(QueueUrl=queue_url, MessageBody=body, DelaySeconds=delay_s)
    schedule_s = time.perf_counter() - t0
    received = 0
    lateness: list[int] = []
    last = 0.0
    deadline = time.monotonic() + delay + 120
    while received < count and time.monotonic() < deadline:
        got = client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10 if batched else 1, WaitTimeSeconds=1
        ).get("Messages", [])
        if not got:
            continue
        now = time.time()
        lateness.extend(max(0, int((now - first_due) * 1000)) for _ in got)
        if batched:
            client.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)
                ],
            )
        else:
            client.delete_message(QueueUrl=queue_url, ReceiptHandle=got[0]["ReceiptHandle"])
        received += len(got)
        last = now
    client.close()
    return _result(
        "bare-batched" if batched else "bare-seed",
        count,
        received,
        schedule_s,
        max(0.0, last - first_due),
        dict(counts),
        lateness,
    )


def _result(
    name: str,
    count: int,
    fired: int,
    schedule_s: float,
    fire_s: float,
    by_op: dict[str, int],
    lateness: list[int],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    requests = sum(by_op.values())
    ordered = sorted(lateness) or [0]
    return {
        "run": name,
        "count": count,
        "fired": fired,
        "schedule_per_s": round(count / schedule_s, 1) if schedule_s else None,
        "fire_per_s": round(fired / fire_s, 1) if fire_s > 0 else None,
        "requests": requests,
        "requests_per_timeout": round(requests / fired, 3) if fired else None,
        "requests_by_operation": by_op,
        "lateness_ms_p50": int(statistics.median(ordered)),
        "lateness_ms_p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        **(extra or {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=10, help="consumer worker threads")
    parser.add_argument("--store", default=None, help="store URL (default: in-process memory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(FAKE_CREDENTIALS)
    with MotoServer() as server:
        admin = boto3.client("sqs", endpoint_url=server.endpoint_url, region_name=REGION)
        results = [
            run_dtimeout(server, admin, args.count, args.delay, args.concurrency, args.store),
            run_bare(server, admin, args.count, args.delay, batched=False),
            run_bare(server, admin, args.count, args.delay, batched=True),
        ]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.count} timeouts, {args.delay:g} s delay, one consumer; moto server on loopback")
    print(
        f"{'run':<14}{'fired':>7}{'sched/s':>10}{'fire/s':>9}{'req/timeout':>13}"
        f"{'p50 ms':>8}{'p99 ms':>8}  requests by operation"
    )
    for r in results:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["requests_by_operation"].items()))
        print(
            f"{r['run']:<14}{r['fired']:>7}{r['schedule_per_s'] or 0:>10}{r['fire_per_s'] or 0:>9}"
            f"{r['requests_per_timeout'] or 0:>13}{r['lateness_ms_p50']:>8}"
            f"{r['lateness_ms_p99']:>8}  {ops}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
