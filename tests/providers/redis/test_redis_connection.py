"""The Redis connection layer: our RESP packing is redis-py's, byte for byte, and connections
kept between calls survive what the pool's per-checkout check used to guard against (a server
that dropped them, a call that failed half-way, a fork)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.errors import TransientStoreError
from dtimeout.interfaces import ScheduleRequest
from dtimeout.providers.redis.connection import pack_command
from dtimeout.providers.redis.plugin import open_store
from dtimeout.providers.redis.store import RedisStore

DAY = 24 * 3600 * 1000
_REDIS_PY = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)

_arg = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.text(min_size=6000, max_size=7000),  # past redis-py's buffer cut-off
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["EVALSHA", "PING", "HSET"]), st.lists(_arg, max_size=20))
def test_packing_is_redis_pys_byte_for_byte(command: str, args: list[str | bytes | int]) -> None:
    assert pack_command(command, *args) == b"".join(_REDIS_PY.pack(command, *args))


def _store(redis_url: str) -> RedisStore:
    store = open_store(f"{redis_url}?prefix=c{uuid.uuid4().hex[:8]}", SYSTEM_CLOCK)
    assert isinstance(store, RedisStore)
    return store


def _schedule(store: RedisStore, key: str) -> Any:
    due = SYSTEM_CLOCK.now_ms() + 60_000
    return store.schedule([ScheduleRequest("k", key, due, None, DAY)])[0]


def _client_names(url: str) -> list[str]:
    admin = redis.Redis.from_url(url)
    try:
        return [c["name"] for c in admin.client_list()]
    finally:
        admin.close()


def test_a_kept_connection_the_server_dropped_is_reconnected(redis_url: str) -> None:
    store = _store(redis_url)
    try:
        assert _schedule(store, "a").result.value == "created"
        admin = redis.Redis.from_url(redis_url)
        try:
            # drop every client connection but the admin's own, as a server restart would
            killed = admin.client_kill_filter(skipme=True, _type="normal")
        finally:
            admin.close()
        assert killed >= 1
        assert _schedule(store, "b").result.value == "created"
    finally:
        store.close()


def test_a_call_that_fails_half_way_leaves_no_reply_for_the_next(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the command went out but before its reply was read must not leave that
    reply on the kept connection, or the next call would read it as its own answer."""
    store = _store(redis_url)
    try:
        _schedule(store, "warm")

        def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(redis.connection.Connection, "read_response", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _schedule(store, "x")  # sent and applied; its reply ('created') is never read
        monkeypatch.undo()
        # The next call gets its own answer ('extended'), not the stale 'created'.
        assert _schedule(store, "warm").result.value == "extended"
        assert _schedule(store, "x").result.value == "extended"
    finally:
        store.close()


def test_a_forked_child_opens_its_own_connection(redis_url: str) -> None:
    store = _store(redis_url)
    try:
        _schedule(store, "parent")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                inherited = len(store.conn._idle)  # dropped at fork: the parent's socket
                ok = _schedule(store, "child").result.value == "created"
                code = 0 if ok and inherited == 0 else 1
            finally:
                os.write(write, b"ok" if code == 0 else b"no")
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        answer = os.read(read, 2)
        os.close(read)
        assert (answer, os.waitstatus_to_exitcode(status)) == (b"ok", 0)
        # the parent's kept connection still answers its own calls
        assert _schedule(store, "parent2").result.value == "created"
    finally:
        store.close()


def test_close_releases_kept_connections(redis_url: str) -> None:
    store = _store(redis_url)
    _schedule(store, "a")
    conn = store.conn._idle[0]
    assert conn._sock is not None
    store.close()
    assert conn._sock is None


def test_a_bounded_pool_is_not_exhausted_by_kept_connections(redis_url: str) -> None:
    """With ``max_connections`` set, a connection kept between script calls is one the client's
    own commands (``get``, a script reload after NOSCRIPT, ``ping``) can never have: with one
    connection allowed, every read after the first script call failed with "Too many
    connections", and a server that forgot its scripts could never be recovered from."""
    url = f"{redis_url}?prefix=c{uuid.uuid4().hex[:8]}&max_connections=1"
    store = open_store(url, SYSTEM_CLOCK)
    assert isinstance(store, RedisStore)
    try:
        assert _schedule(store, "a").result.value == "created"
        record = store.get("k", "a")  # a plain redis-py command after a script call
        assert record is not None and record.generation == 1
        store.conn.client.script_flush()  # the server forgets the scripts: reload, re-run
        assert _schedule(store, "b").result.value == "created"
        store.ping()
    finally:
        store.close()


def test_scripts_forgotten_again_right_after_the_reload_are_a_transient_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOSCRIPT is answered by one reload and re-run; a server that forgets them again at once
    (a restart or flush in progress) is transient, so a consumer backs off instead of dying,
    and the next call reloads them."""
    store = _store(redis_url)
    try:
        _schedule(store, "warm")
        client = store.conn.client
        real_load = client.script_load

        def load_then_forget(source: str) -> str:
            sha = real_load(source)
            client.script_flush()
            return str(sha)

        client.script_flush()
        monkeypatch.setattr(client, "script_load", load_then_forget)
        with pytest.raises(TransientStoreError, match=r"[Ss]cript"):
            _schedule(store, "x")
        monkeypatch.undo()
        assert _schedule(store, "x").result.value == "created"
    finally:
        store.close()
