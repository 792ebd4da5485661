"""Operation ids: unique across calls, threads and forked processes."""

from __future__ import annotations

import os
import threading

from dtimeout.ids import unique_id


def test_ids_differ_between_calls_and_threads() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [unique_id() for _ in range(2000)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == 8000
    assert len(set(seen)) == 8000


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    unique_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, " ".join(unique_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        child = f.read().decode().split()
    parent = [unique_id() for _ in range(50)]
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 50
    assert not set(child) & set(parent)
