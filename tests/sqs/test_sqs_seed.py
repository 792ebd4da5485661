"""The seed's AWS scenario through the CLI: ``dtimeout run produce`` and ``dtimeout run consume``
as separate processes, SQS (moto's server) for the delays and a real Redis for the states.

Checked: the consumer exits 0 on SIGTERM; every timeout ends FIRED or CANCELLED; the consumer
fired exactly the FIRED ones (no loss, no duplicate); the producer's
``cancelled`` answers match the CANCELLED records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from sqs_support import MakeQueue

from dtimeout.app import Timeouts
from dtimeout.model import TimeoutState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_run_produce_and_run_consume_with_sqs_and_redis(
    make_queue: MakeQueue, redis_url: str
) -> None:
    transport = make_queue(redrive=10).sqs_url()
    store = f"{redis_url}{'&' if '?' in redis_url else '?'}prefix=seed{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "DTIMEOUT_TRANSPORT": transport, "DTIMEOUT_STORE": store}
    cli = [sys.executable, "-m", "dtimeout"]
    produce = ["run", "produce", "--count", "12", "--interval", "250ms", "--delay", "2s"]
    produce += ["--complete-ratio", "0.6", "--seed", "4", "--key-prefix", "seed-", "--json"]
    consumer = subprocess.Popen(
        [*cli, "run", "consume", "--app", "dtimeout.demo:seed_app", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        produced = subprocess.run(
            [*cli, *produce],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert produced.returncode == 0, produced.stderr
        summary = json.loads(produced.stdout)
        assert summary["scheduled"] == 12
        with Timeouts(transport, store) as timeouts:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                records = timeouts.list(kind="demo", limit=50)
                if len(records) == 12 and all(r.state.ended for r in records):
                    break
                time.sleep(0.3)
        consumer.send_signal(signal.SIGTERM)
        out, err = consumer.communicate(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    assert consumer.returncode == 0, err[-2000:]
    stats = json.loads(out)
    states = [r.state for r in records]
    fired = states.count(TimeoutState.FIRED)
    cancelled = states.count(TimeoutState.CANCELLED)
    assert fired + cancelled == 12, states
    assert cancelled == summary["completed"].get("cancelled", 0)
    assert 0 < fired < 12  # seed 4: both sides of the scenario happen
    assert stats["fired"] == fired  # each fired exactly once, none lost
    assert stats["failed"] == 0 and stats["dead_lettered"] == 0
    assert stats["lateness_p50_ms"] is not None and stats["lateness_p50_ms"] >= 0  # not early
