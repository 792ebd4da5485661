"""SIGINT/SIGTERM on ``run consume``: stop receiving, finish the handler in flight, exit 0.

The handler sleeps long enough for the signal to land while it runs; the consumer must let it
finish and settle it (the timeout ends FIRED, fired once), not abandon it to a lease expiry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dtimeout import Timeouts, TimeoutState

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import os
    import time

    from dtimeout import Timeouts

    URL = os.environ["E2E_URL"]
    timeouts = Timeouts(URL, URL)


    @timeouts.handler("slow")
    def slow(t):
        open(t.key + ".started", "w").close()
        time.sleep(1.5)
        open(t.key + ".finished", "w").close()
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_handler_in_flight_and_exits_0(
    tmp_path: Path, signum: signal.Signals
) -> None:
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    (tmp_path / "slow_app.py").write_text(APP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
    env.update(E2E_URL=url, DTIMEOUT_LOG_LEVEL="ERROR")
    with Timeouts(url, url) as timeouts:
        timeouts.schedule("slow", "job", after=0)
        consumer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dtimeout",
                "run",
                "consume",
                "--app",
                "slow_app:timeouts",
                "--json",
            ],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not (tmp_path / "job.started").exists():
                assert consumer.poll() is None, consumer.communicate()
                assert time.monotonic() < deadline, "the handler never started"
                time.sleep(0.05)
            consumer.send_signal(signum)
            out, err = consumer.communicate(timeout=30)
        finally:
            if consumer.poll() is None:
                os.killpg(consumer.pid, signal.SIGKILL)
                consumer.wait()
        assert consumer.returncode == 0, err
        assert (tmp_path / "job.finished").exists()
        assert json.loads(out)["fired"] == 1
        assert signal.Signals(signum).name in err  # "dtimeout: SIGTERM: finishing in-flight ..."
        record = timeouts.status("slow", "job")
        assert record is not None and record.state is TimeoutState.FIRED
