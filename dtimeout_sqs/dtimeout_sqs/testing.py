"""Test helpers: an SQS-compatible server (moto, in server mode) on a free loopback port.

For this repository's tests and benchmarks, and for anyone testing code that uses ``sqs://``
without an AWS account. moto runs as its own process over real HTTP, so requests go through
botocore's whole stack (signing, serialisation, retries) exactly as they would against AWS.
moto itself is not a dependency of ``dtimeout-sqs``: install ``moto[server]`` to use this.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import TracebackType
from typing import IO

FAKE_CREDENTIALS = {
    # Placeholders that only moto accepts; never real credentials.
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# The server process: moto's own entry point, plus a watchdog that exits when our end of its
# stdin closes, so a test session killed without teardown leaves no server behind.
_SERVE = (
    "import os, sys, threading\n"
    "threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()\n"
    "from moto.server import main\n"
    "main(sys.argv[1:])\n"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1, started and stopped with its process group.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``endpoint_url`` is where
    boto3 should point.
    """

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        last_error = "not started"
        for _ in range(3):  # the free port may be taken between probe and bind: try again
            self.port = free_port()
            # stderr goes to a file, never a pipe: moto logs every request there, and a pipe
            # nobody reads fills up and freezes the server after a few hundred requests.
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives until stop()
            self._process = subprocess.Popen(
                [sys.executable, "-c", _SERVE, "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.PIPE,  # closed when we die: the server then exits too
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                start_new_session=True,  # its own process group, killed as a whole in stop()
            )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    self._log.seek(0)
                    last_error = self._log.read()[-500:].decode(errors="replace")
                    break
                try:
                    with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                        return self
                except OSError:
                    time.sleep(0.1)
            else:
                last_error = f"no answer within {self.startup_timeout} s"
            self.stop()
        raise RuntimeError(f"moto server did not start: {last_error}")

    def reset(self) -> None:
        """Forget every queue (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass
        if process.stdin is not None:
            process.stdin.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
