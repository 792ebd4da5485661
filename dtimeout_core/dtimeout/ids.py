"""Unique ids for provider operations and lease tokens, without a system call each.

Why not ``uuid.uuid4()`` per call: it reads the operating system's random source every time,
a system call that cost about 4 µs here on every ``schedule``. These ids only have to differ
between calls, processes and hosts (a script recognises a re-sent call by its id); they never
have to be unguessable. So a random prefix is drawn once per process (and again in a forked
child, which would otherwise repeat its parent's ids) and a counter tells the calls apart.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex()  # 48 random bits per process
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def unique_id() -> str:
    """A short id no other call, process or host will use (thread-safe: ``next`` on a count is
    atomic in CPython)."""
    return f"{_prefix}{next(_counter):x}"


__all__ = ["unique_id"]
