"""SIGINT/SIGTERM for the long-running commands: one graceful stop, repeats ignored for a while,
then a forced quit.

The rules (docs/cli.md, "Signals"):

* the first SIGINT or SIGTERM asks the command to stop gracefully (``stop()``) and prints one
  notice on stderr;
* further signals within ``grace`` seconds of the first are ignored. Duplicates are normal:
  GNU ``timeout`` signals the child and then its whole process group, ``kill 0`` and many
  supervisors do the same, and people press Ctrl-C twice without thinking. Treating the second
  signal as "abort" turned every ``timeout 60 dtimeout run consume`` into exit 130 with no
  summary and unsettled work;
* a signal after the grace period forces quit at once: ``on_force()`` (best-effort cleanup),
  then ``os._exit(128 + signum)`` — 130 for SIGINT, 143 for SIGTERM. ``os._exit`` because a
  forced quit is exactly the case where the graceful path is stuck (a hung handler in a worker
  thread would keep a normal interpreter exit waiting forever, and tearing the interpreter down
  under threads that are inside SQLite can crash it). In-flight work is abandoned; leases
  expire and another consumer takes it over.

Why the Python-level handler does nothing and a watcher thread does the work: a signal handler
runs on the main thread between two bytecodes, possibly while that thread holds the very lock
``stop()`` needs (``Event.set`` from inside ``Event.wait`` deadlocks), or is in the middle of a
buffered write to the stream the handler would print to (a reentrant-write ``RuntimeError``).
``signal.set_wakeup_fd`` makes the interpreter write the signal number into a pipe from its C
handler; the watcher reads it and acts in ordinary thread context, where taking locks and
printing are safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 2.0
_SENTINEL = 0  # written by ``__exit__`` to end the watcher; no signal has number 0


def exit_code_for(signum: int) -> int:
    """The shell's code for "ended by this signal": 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the watcher thread does the work (see the module docstring)."""


_DEFAULT_HANDLERS: tuple[object, ...] = (signal.SIG_DFL, signal.default_int_handler, None)


class StopOnSignal:
    """Context manager: install the rules above around a long-running command's body.

    ``stop`` is called once, from the watcher thread, at the first signal; ``what`` says what
    stopping means ("finishing in-flight handlers"). ``signum`` tells the command afterwards
    whether (and by which signal) it was stopped. Off the main thread it does nothing (Python
    delivers signals to the main thread only), so a command run from a worker thread keeps the
    process's own handling.
    """

    def __init__(
        self,
        stop: Callable[[], None],
        what: str,
        *,
        grace: float = GRACE_SECONDS,
        on_force: Callable[[], None] | None = None,
    ) -> None:
        self._stop = stop
        self._what = what
        self._grace = grace
        self._on_force = on_force
        self.signum: int | None = None
        self._first_at = 0.0
        self._noted_repeat = False
        self._active = False
        self._previous: dict[int, object] = {}
        self._previous_fd = -1
        self._read_fd = -1
        self._write_fd = -1
        self._watcher: threading.Thread | None = None

    @property
    def stopped_by(self) -> str | None:
        """The name of the signal that stopped the command (``None``: it ran to its end)."""
        return signal_name(self.signum) if self.signum is not None else None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, _ignore)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="dtimeout-signals", daemon=True)
        self._watcher.start()
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        self._active = False
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self._previous.items():
            if self.signum is not None and handler in _DEFAULT_HANDLERS:
                # The command is ending because of a signal, so the process is too: a duplicate
                # arriving now (after the summary, during interpreter exit) must not turn a
                # graceful stop into "killed by SIGTERM". SIG_IGN, not a Python handler: the
                # interpreter's finalization resets Python-level handlers to the default but
                # leaves SIG_IGN alone. Handlers an embedding application installed itself are
                # restored as they were.
                signal.signal(s, signal.SIG_IGN)
                continue
            signal.signal(s, handler)  # type: ignore[arg-type]
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([_SENTINEL]))
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the watcher thread ----------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            for signum in data:
                if signum == _SENTINEL:
                    return
                self._received(signum)

    def _received(self, signum: int) -> None:
        name = signal_name(signum)
        if self.signum is None:
            self.signum = signum
            self._first_at = time.monotonic()
            _notice(
                f"{name}: {self._what} (signals in the next {self._grace:g}s are ignored; "
                "one after that forces quit)"
            )
            try:
                self._stop()
            except Exception:
                log.exception("stopping after %s failed", name)
            return
        if time.monotonic() - self._first_at < self._grace:
            if signum == signal.SIGINT and not self._noted_repeat:
                self._noted_repeat = True  # people press Ctrl-C twice; machines repeat SIGTERM
                _notice(f"{name}: already stopping; again after {self._grace:g}s forces quit")
            return
        _notice(f"{name} again: forced quit; in-flight work is abandoned")
        if self._on_force is not None:
            try:
                self._on_force()
            except Exception:
                log.exception("cleanup before the forced quit failed")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(exit_code_for(signum))


def _notice(text: str) -> None:
    with contextlib.suppress(Exception):
        print(f"dtimeout: {text}", file=sys.stderr, flush=True)
