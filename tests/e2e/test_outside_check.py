"""The issue's outside check, as a user would run it, with real processes.

200 timeouts are scheduled with the Python API on a SQLite file; 60% are cancelled at random
moments, some after their due time; two consumers run as ``python -m dtimeout run consume --app
MODULE:timeouts`` and are stopped with SIGTERM. Every timeout whose cancel answered
``cancelled`` must never fire, every other one must fire exactly once and never early, and both
consumers must exit 0. Handlers append one line per call to a file (O_APPEND keeps lines whole
across processes), so duplicates between processes are visible.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from dtimeout import CancelResult, Timeouts, TimeoutState

pytestmark = pytest.mark.slow

KIND = "order"
COUNT = 200
CANCEL_SHARE = 0.6

APP = textwrap.dedent(
    """
    import os
    import time
    from datetime import timedelta

    from dtimeout import Timeouts

    URL = os.environ["E2E_URL"]
    OUT = os.environ["E2E_OUT"]

    timeouts = Timeouts(URL, URL, lease=timedelta(seconds=10))


    @timeouts.handler("order")
    def fire(t):
        due = int(t.due_at.timestamp() * 1000)
        line = f"{t.key} {t.generation} {time.time_ns() // 1_000_000} {due} {os.getpid()}\\n"
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    """
)


def _fires(path: Path) -> list[tuple[str, int, int]]:
    """(key, started_ms, due_ms) per handler call."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, _generation, started, due, _pid = line.split()
        out.append((key, int(started), int(due)))
    return out


def _start_consumer(tmp_path: Path, env: dict[str, str], name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dtimeout",
            "run",
            "consume",
            "--app",
            "e2e_app:timeouts",
            "--concurrency",
            "2",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=open(tmp_path / f"{name}.out", "w"),
        stderr=open(tmp_path / f"{name}.err", "w"),
        start_new_session=True,
    )


def test_outside_check(tmp_path: Path) -> None:
    db = tmp_path / "timeouts.db"
    url = f"sqlite:///{db}"
    out = tmp_path / "fires.txt"
    (tmp_path / "e2e_app.py").write_text(APP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
    env.update(E2E_URL=url, E2E_OUT=str(out), DTIMEOUT_LOG_LEVEL="ERROR")

    rng = random.Random(20240601)
    timeouts = Timeouts(url, url)
    consumers = [_start_consumer(tmp_path, env, f"consumer{i}") for i in range(2)]
    try:
        start = time.time()
        delays = {f"o{i}": rng.uniform(1.0, 4.0) for i in range(COUNT)}
        due_ms: dict[str, int] = {}
        for key, delay in delays.items():
            record = timeouts.schedule(KIND, key, after=timedelta(seconds=delay))
            due_ms[key] = record.due_at_ms
        # Cancel 60% at random moments between scheduling and one second after due.
        chosen = rng.sample(sorted(delays), int(COUNT * CANCEL_SHARE))
        plan = sorted((rng.uniform(0.0, delays[k] + 1.0), k) for k in chosen)
        answers: dict[str, CancelResult] = {}
        after_due = 0
        for moment, key in plan:
            time.sleep(max(0.0, start + moment - time.time()))
            after_due += time.time() * 1000 > due_ms[key]
            answers[key] = timeouts.cancel(KIND, key)
        assert after_due > 0, "the plan must include cancels after the due time"

        cancelled = {k for k, a in answers.items() if a is CancelResult.CANCELLED}
        must_fire = set(delays) - cancelled
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if must_fire <= {key for key, _, _ in _fires(out)}:
                break
            assert all(c.poll() is None for c in consumers), "a consumer died"
            time.sleep(0.2)
        time.sleep(0.5)  # room for a duplicate to show up before we stop looking
    finally:
        for consumer in consumers:
            if consumer.poll() is None:
                consumer.send_signal(signal.SIGTERM)
        codes = []
        for consumer in consumers:
            try:
                codes.append(consumer.wait(timeout=30))
            except subprocess.TimeoutExpired:
                os.killpg(consumer.pid, signal.SIGKILL)
                codes.append(consumer.wait())

    errors = [(tmp_path / f"consumer{i}.err").read_text() for i in range(2)]
    assert codes == [0, 0], errors

    fires = _fires(out)
    calls = Counter(key for key, _, _ in fires)
    assert not (set(calls) & cancelled), "a timeout whose cancel answered 'cancelled' fired"
    assert {k: n for k, n in calls.items() if n != 1} == {}, "duplicate fires"
    assert set(calls) == must_fire, "lost timeouts"
    early = [(k, started, due) for k, started, due in fires if started < due]
    assert early == []
    assert all(due_ms[k] == due for k, _, due in fires)

    # Each consumer reported its own count on SIGTERM; together they account for every fire.
    summaries = [json.loads((tmp_path / f"consumer{i}.out").read_text()) for i in range(2)]
    assert sum(s["fired"] for s in summaries) == len(fires)

    # The store agrees with what the handlers saw.
    for key in delays:
        final = timeouts.status(KIND, key)
        assert final is not None
        expected = TimeoutState.CANCELLED if key in cancelled else TimeoutState.FIRED
        assert final.state is expected, (key, final)
    timeouts.close()
