"""Signals on the long-running commands, in real processes: what a user or a supervisor sends.

- ``demo``: the first SIGINT/SIGTERM stops producer and consumers cleanly, prints the tally so
  far, removes the throwaway database (with ``-wal``/``-shm``) and exits 130/143; repeated
  signals during that shutdown change nothing (they used to abort it, and sometimes crash the
  interpreter while threads were still inside SQLite).
- ``run consume`` / ``run produce``: two SIGTERMs close together — GNU ``timeout`` signals the
  child and then its process group — still give the graceful stop, its summary and exit 0.
- a signal sent after the grace period forces quit at once, with the signal's exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dtimeout import Timeouts, TimeoutState

pytestmark = pytest.mark.slow

HANDLER_APP = textwrap.dedent(
    """
    import os
    import time

    from dtimeout import Timeouts

    URL = os.environ["E2E_URL"]
    SECONDS = float(os.environ["E2E_HANDLER_SECONDS"])
    timeouts = Timeouts(URL, URL)


    @timeouts.handler("slow")
    def slow(t):
        open(t.key + ".started", "w").close()
        time.sleep(SECONDS)
        open(t.key + ".finished", "w").close()
    """
)


class Proc:
    """A ``python -m dtimeout`` child in its own session, its output collected by threads."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
        base.update(env or {})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dtimeout", *args],
            cwd=cwd,
            env=base,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    def wait_for(self, predicate: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert self.popen.poll() is None, (what, self.stdout, self.stderr)
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def send(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def signal_like_gnu_timeout(self, signum: signal.Signals) -> None:
        """GNU timeout: the signal to the child, then the same signal to the process group.

        The second is sent once the first was handled (its notice is on stderr): two signals
        that land before Python runs its handler are merged into one by the interpreter, and
        would not test the repeat at all.
        """
        os.kill(self.popen.pid, signum)
        name = signal.Signals(signum).name
        self.wait_for(lambda: name in self.stderr, f"the {name} notice")
        os.killpg(self.popen.pid, signum)

    def finish(self, timeout: float = 30.0) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        finally:
            self.kill()
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def assert_no_crash(proc: Proc) -> None:
    for marker in ("Traceback", "Fatal Python error", "Segmentation", "Exception ignored"):
        assert marker not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------
# demo


def _start_demo(tmp_path: Path) -> Proc:
    proc = Proc(
        ["demo", "--count", "400", "--delay", "1s", "--interval", "10ms", "--seed", "3"],
        tmp_path,
        {"DTIMEOUT_LOG_LEVEL": "ERROR"},
    )
    # The plain (piped) display prints a progress line once something was scheduled.
    proc.wait_for(lambda: any("scheduled" in line for line in proc.out[2:]), "the demo to run")
    time.sleep(0.5)  # consumers are firing, the producer is scheduling: threads are in SQLite
    return proc


def _demo_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / ".dtimeout"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_demo_sigint_repeated_stops_cleanly_with_the_tally_and_removes_the_db(
    tmp_path: Path,
) -> None:
    proc = _start_demo(tmp_path)
    try:
        assert any(name.startswith("demo-") for name in _demo_files(tmp_path))
        proc.send(signal.SIGINT)
        for _ in range(3):  # an impatient user: more Ctrl-C while it shuts down
            time.sleep(0.05)
            proc.send(signal.SIGINT)
        code = proc.finish()
    finally:
        proc.kill()
    assert code == 130, (proc.stdout, proc.stderr)
    assert_no_crash(proc)
    assert "verdict" in proc.stdout and "INTERRUPTED" in proc.stdout, proc.stdout
    assert "scheduled" in proc.stdout
    assert _demo_files(tmp_path) == []


def test_demo_sigterm_exits_143_with_the_tally_and_removes_the_db(tmp_path: Path) -> None:
    proc = _start_demo(tmp_path)
    try:
        proc.signal_like_gnu_timeout(signal.SIGTERM)
        code = proc.finish()
    finally:
        proc.kill()
    assert code == 143, (proc.stdout, proc.stderr)
    assert_no_crash(proc)
    assert "INTERRUPTED" in proc.stdout, proc.stdout
    assert _demo_files(tmp_path) == []


def test_demo_json_reports_the_interruption(tmp_path: Path) -> None:
    proc = Proc(
        ["demo", "--count", "400", "--delay", "1s", "--interval", "10ms", "--json"],
        tmp_path,
        {"DTIMEOUT_LOG_LEVEL": "ERROR"},
    )
    try:
        proc.wait_for(lambda: bool(_demo_files(tmp_path)), "the demo database")
        time.sleep(1.0)
        proc.send(signal.SIGTERM)
        code = proc.finish()
    finally:
        proc.kill()
    assert code == 143, proc.stderr
    tally = json.loads(proc.stdout)
    assert tally["interrupted"] == "SIGTERM"
    assert tally["scheduled"] >= 1
    assert tally["scheduled"] == tally["cancelled"] + tally["fired"] + tally["unsettled"]
    assert tally["duplicates"] == tally["early"] == tally["cancelled_but_fired"] == 0
    assert _demo_files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# run consume / run produce


def _consumer(tmp_path: Path, handler_seconds: float) -> tuple[Proc, str]:
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    (tmp_path / "slow_app.py").write_text(HANDLER_APP, encoding="utf-8")
    with Timeouts(url, url) as timeouts:
        timeouts.schedule("slow", "job", after=0)
    proc = Proc(
        ["run", "consume", "--app", "slow_app:timeouts", "--json"],
        tmp_path,
        {
            "E2E_URL": url,
            "E2E_HANDLER_SECONDS": str(handler_seconds),
            "DTIMEOUT_LOG_LEVEL": "ERROR",
        },
    )
    proc.wait_for(lambda: (tmp_path / "job.started").exists(), "the handler to start")
    return proc, url


def test_consume_two_sigterms_close_together_still_stop_gracefully(tmp_path: Path) -> None:
    proc, url = _consumer(tmp_path, handler_seconds=1.5)
    try:
        proc.signal_like_gnu_timeout(signal.SIGTERM)
        code = proc.finish()
    finally:
        proc.kill()
    assert code == 0, proc.stderr
    assert_no_crash(proc)
    assert (tmp_path / "job.finished").exists()
    assert json.loads(proc.stdout)["fired"] == 1
    with Timeouts(url, url) as timeouts:
        record = timeouts.status("slow", "job")
    assert record is not None and record.state is TimeoutState.FIRED


def test_consume_a_signal_after_the_grace_period_forces_quit(tmp_path: Path) -> None:
    proc, _ = _consumer(tmp_path, handler_seconds=120)  # a hung handler: graceful never ends
    try:
        proc.send(signal.SIGTERM)
        proc.wait_for(lambda: "SIGTERM" in proc.stderr, "the stop notice")
        time.sleep(2.5)  # past the 2 s in which repeats are ignored
        proc.send(signal.SIGINT)
        code = proc.finish(timeout=15)
    finally:
        proc.kill()
    assert code == 130, proc.stderr
    assert "forced quit" in proc.stderr
    assert not (tmp_path / "job.finished").exists()


def test_produce_two_sigterms_close_together_still_stop_gracefully(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'produce.db'}"
    proc = Proc(
        [
            "--transport",
            url,
            "--store",
            url,
            "run",
            "produce",
            "--interval",
            "100ms",
            "--delay",
            "1s",
            "--complete-ratio",
            "0.5",
        ],
        tmp_path,
        {"DTIMEOUT_LOG_LEVEL": "ERROR"},
    )
    try:
        proc.wait_for(lambda: len(proc.out) >= 3, "some timeouts to be scheduled")
        proc.signal_like_gnu_timeout(signal.SIGTERM)
        code = proc.finish()
    finally:
        proc.kill()
    assert code == 0, proc.stderr
    assert_no_crash(proc)
    assert proc.out[-1].startswith("produced "), proc.stdout
