"""The Redis store and transport directly against real servers: expiry, server time, sharding,
leases, errors, restarts, lost replies, and the plugin's registration."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_proxy import DroppingProxy

from dtimeout.clock import SYSTEM_CLOCK, FakeClock
from dtimeout.errors import ConfigurationError, TransientStoreError, TransientTransportError
from dtimeout.interfaces import (
    CancelRef,
    CancelRequest,
    ClaimRequest,
    LeaseRef,
    OutgoingMessage,
    ScheduleRequest,
)
from dtimeout.model import (
    CancelResult,
    ClaimResult,
    OrphanPolicy,
    ScheduleResult,
    SettleResult,
    TimeoutMessage,
)
from dtimeout.providers.redis import keys as K
from dtimeout.providers.redis.plugin import open_store, open_transport
from dtimeout.providers.redis.store import RedisStore
from dtimeout.providers.redis.transport import RedisTransport
from dtimeout.testing.servers import RedisSentinelServer, RedisServer, free_port, make_tls_files

DAY = 24 * 3600 * 1000


def fresh(url: str, **options: object) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"prefix": f"u{uuid.uuid4().hex[:10]}", **options}.items()
    )
    return f"{url}{'&' if '?' in url else '?'}{query}"


class SkewedClock:
    """A real clock that runs an hour ahead of the server's: an application host gone wrong."""

    is_fake = False

    def now_ms(self) -> int:
        return SYSTEM_CLOCK.now_ms() + 3_600_000

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = open_store(fresh(redis_url), SYSTEM_CLOCK)
    yield s
    s.close()


def message(key: str, gen: int, due: int) -> TimeoutMessage:
    return TimeoutMessage("k", key, gen, due, None)


def claim(key: str, gen: int, owner: str, due: int = 0) -> ClaimRequest:
    return ClaimRequest(message(key, gen, due), owner, 30_000, 5, OrphanPolicy.FIRE, DAY)


# -- expiry and time ------------------------------------------------------------------------------


def test_every_write_keeps_the_record_expiring_at_due_plus_retention(
    store: RedisStore, redis_server: RedisServer
) -> None:
    raw = redis_server.client()
    now = SYSTEM_CLOCK.now_ms()
    due = now - 5
    outcome = store.schedule([ScheduleRequest("k", "a", due, {"n": 1}, DAY)])[0]
    name = K.record_key(store.prefix, "k", "a")
    assert raw.pexpiretime(name) == outcome.timeout.expires_ms >= due + DAY
    claimed = store.claim([claim("a", 1, "me")])[0]
    assert claimed.result is ClaimResult.CLAIMED
    assert raw.pexpiretime(name) == claimed.timeout.expires_ms  # type: ignore[union-attr]
    assert store.complete([LeaseRef("k", "a", 1, "me")]) == [SettleResult.COMPLETED]
    assert raw.pexpiretime(name) == claimed.timeout.expires_ms  # type: ignore[union-attr]
    # a month-long delay: retention counts from due, never from now
    later = now + 30 * DAY
    again = store.schedule([ScheduleRequest("k", "a", later, None, DAY)])[0]
    assert again.result is ScheduleResult.CREATED
    assert raw.pexpiretime(name) == later + DAY
    assert store.cancel([CancelRequest("k", "a", "r")])[0].result is CancelResult.CANCELLED
    assert raw.pexpiretime(name) == later + DAY  # cancel did not wipe it


def test_the_server_clock_decides_not_a_skewed_host(redis_url: str) -> None:
    url = fresh(redis_url)
    skewed = SkewedClock()
    store, transport = open_store(url, skewed), open_transport(url, skewed)
    try:
        due = skewed.now_ms()  # "now" for the host, an hour early for the server
        store.schedule([ScheduleRequest("k", "a", due, None, DAY)])
        transport.send([OutgoingMessage("k:a:1", b"x", due)])
        assert transport.receive(10, 0.0, 5) == []
        outcome = store.claim(
            [ClaimRequest(message("a", 1, due), "me", 5_000, 5, OrphanPolicy.FIRE, DAY)]
        )
        assert outcome[0].result is ClaimResult.NOT_DUE
    finally:
        store.close()
        transport.close()


def test_cancel_of_a_key_never_scheduled_writes_nothing(
    store: RedisStore, redis_server: RedisServer
) -> None:
    assert store.cancel([CancelRequest("k", "o1", "r")])[0].result is CancelResult.NOT_FOUND
    assert redis_server.client().exists(K.record_key(store.prefix, "k", "o1")) == 0
    created = store.schedule([ScheduleRequest("k", "o1", SYSTEM_CLOCK.now_ms(), None, DAY)])[0]
    assert (created.result, created.timeout.generation) == (ScheduleResult.CREATED, 1)


# -- the transport --------------------------------------------------------------------------------


def test_receive_never_hands_out_early_and_waits_for_the_due_time(redis_url: str) -> None:
    transport = open_transport(fresh(redis_url), SYSTEM_CLOCK)
    try:
        due = SYSTEM_CLOCK.now_ms() + 300
        transport.send([OutgoingMessage("k:a:1", b"x", due)])
        assert transport.receive(10, 0.0, 5) == []
        got = transport.receive(10, 3.0, 5)
        assert [d.message_id for d in got] == ["k:a:1"]
        assert SYSTEM_CLOCK.now_ms() >= due
    finally:
        transport.close()


def test_expired_lease_comes_back_and_the_old_token_cannot_settle(redis_url: str) -> None:
    clock = FakeClock()
    transport = open_transport(fresh(redis_url), clock)
    try:
        transport.send([OutgoingMessage("k:a:1", b"x", clock.now_ms())])
        first = transport.receive(10, 0, 2)
        assert transport.receive(10, 0, 2) == []
        clock.advance(3)
        second = transport.receive(10, 0, 2)
        assert [d.delivery_count for d in first + second] == [1, 2]
        transport.ack(first)  # stale token: nothing happens
        transport.retry_later(first[0], 0)
        assert transport.counts() == {"due": 0, "inflight": 1}
        transport.retry_later(second[0], 1_000)  # not counted as a failed delivery
        clock.advance(1)
        third = transport.receive(10, 0, 2)
        assert third[0].delivery_count == 2
        transport.dead_letter(third[0], "no handler for kind 'k'")
        assert transport.counts() == {"due": 0, "inflight": 0}
        dead = transport.dead_letters()
        assert [(d["id"], d["reason"], d["body"]) for d in dead] == [
            ("k:a:1", "no handler for kind 'k'", "x")
        ]
    finally:
        transport.close()


def test_any_bytes_and_ids_come_back_exactly_as_sent(redis_url: str) -> None:
    """Receive answers in JSON (one bulk string); bodies that are not UTF-8, control characters,
    quotes, slashes and non-ASCII ids must still come back byte for byte."""
    clock = FakeClock()
    transport = open_transport(fresh(redis_url), clock)
    bodies = {
        "k:every-byte:1": bytes(range(256)),
        "k:bad-utf8:1": b"\xff\xfe\xc3(\xed\xa0\x80 \x00",
        'k:\u00e9t\u00e9/"q"\\:1': '{"a":"\u00e9\u20ac\U0001f600\\/\n"}'.encode(),
        "k:empty:1": b"",
    }
    try:
        transport.send([OutgoingMessage(i, b, clock.now_ms()) for i, b in bodies.items()])
        got = transport.receive(10, 0, 30)
        assert {d.message_id: d.body for d in got} == bodies
        transport.ack(got)
        assert transport.counts() == {"due": 0, "inflight": 0}
    finally:
        transport.close()


def test_shards_are_polled_fairly_and_batches_never_exceed_the_ask(redis_url: str) -> None:
    clock = FakeClock()
    transport = open_transport(fresh(redis_url, shards=8), clock)
    try:
        ids = [f"k:{i}:1" for i in range(80)]
        transport.send([OutgoingMessage(i, b"x", clock.now_ms()) for i in ids])
        assert {K.shard_of(i, 8) for i in ids} == set(range(8))
        seen: list[str] = []
        shards_per_batch = []
        for _ in range(16):
            batch = transport.receive(5, 0, 30)
            assert len(batch) <= 5
            seen += [d.message_id for d in batch]
            shards_per_batch.append({d.receipt[0] for d in batch})
        assert sorted(seen) == sorted(ids)  # everything, each once
        # the first two batches already drew from every shard
        assert set().union(*shards_per_batch[:2]) == set(range(8))
        # one due message on one shard is found even when most shards are asked for nothing
        transport.send([OutgoingMessage("k:lonely:1", b"x", clock.now_ms())])
        assert [d.message_id for d in transport.receive(1, 0, 30)] == ["k:lonely:1"]
    finally:
        transport.close()


def test_native_cancel_leaves_a_held_message_to_its_consumer(redis_url: str) -> None:
    clock = FakeClock()
    transport = open_transport(fresh(redis_url), clock)
    try:
        now = clock.now_ms()
        transport.send(
            [OutgoingMessage("k:a:1", b"x", now), OutgoingMessage("k:b:1", b"y", now + 10)]
        )
        held = transport.receive(1, 0, 30)
        transport.cancel([CancelRef("k:a:1", None), CancelRef("k:b:1", None)])
        assert transport.counts() == {"due": 0, "inflight": 1}
        transport.ack(held)
        assert transport.counts() == {"due": 0, "inflight": 0}
    finally:
        transport.close()


# -- connections and errors -----------------------------------------------------------------------


def test_wrong_password_is_a_configuration_error_without_the_secret(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="right-one") as server:
        url = f"redis://:wrong-one@127.0.0.1:{server.port}/0"
        store = open_store(url, SYSTEM_CLOCK)
        with pytest.raises(ConfigurationError) as info:
            store.get("k", "a")
        assert "wrong-one" not in str(info.value) and "right-one" not in str(info.value)
        good = open_store(f"redis://:right-one@127.0.0.1:{server.port}/0", SYSTEM_CLOCK)
        assert good.get("k", "a") is None
        good.close()


def test_unreachable_server_is_transient_for_both_roles() -> None:
    url = f"redis://:pw@127.0.0.1:{free_port()}/0?retries=1&connect_timeout=0.5"
    store, transport = open_store(url, SYSTEM_CLOCK), open_transport(url, SYSTEM_CLOCK)
    with pytest.raises(TransientStoreError) as info:
        store.cancel([CancelRequest("k", "a", "r")])
    assert "pw" not in str(info.value).replace("127.0.0.1", "")
    with pytest.raises(TransientTransportError):
        transport.receive(1, 0, 1)


def test_untrusted_tls_certificate_is_a_configuration_error(
    redis_tls_server: RedisServer, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path / "other-ca")
    assert redis_tls_server.tls is not None
    url = (
        f"rediss://127.0.0.1:{redis_tls_server.port}/0?ssl_ca_certs={other.ca}"
        f"&ssl_certfile={redis_tls_server.tls.cert}&ssl_keyfile={redis_tls_server.tls.key}&retries=0"
    )
    with pytest.raises(ConfigurationError, match="certificate"):
        open_store(url, SYSTEM_CLOCK).get("k", "a")


def test_a_restarted_server_loses_its_scripts_and_nothing_breaks(tmp_path: Path) -> None:
    with RedisServer(tmp_path, aof=True) as server:
        url = fresh(server.url)
        store, transport = open_store(url, SYSTEM_CLOCK), open_transport(url, SYSTEM_CLOCK)
        now = SYSTEM_CLOCK.now_ms()
        store.schedule([ScheduleRequest("k", f"a{i}", now, None, DAY) for i in range(3)])
        transport.send([OutgoingMessage(f"k:a{i}:1", b"x", now) for i in range(3)])
        server.restart()  # AOF keeps the data, the script cache is empty
        outcomes = store.claim([claim(f"a{i}", 1, "me") for i in range(3)])  # pipelined path
        assert {o.result for o in outcomes} == {ClaimResult.CLAIMED}
        assert len(transport.receive(10, 0, 30)) == 3  # single-call path
        assert store.cancel([CancelRequest("k", "zz", "r")])[0].result is CancelResult.NOT_FOUND
        store.close()
        transport.close()


@pytest.mark.parametrize("operation", ["cancel", "schedule"])
def test_a_lost_reply_is_answered_by_the_retry_as_the_first_time(
    redis_server: RedisServer, operation: str
) -> None:
    proxy = DroppingProxy(redis_server.port)
    store = open_store(fresh(f"redis://127.0.0.1:{proxy.port}/0"), SYSTEM_CLOCK)
    try:
        now = SYSTEM_CLOCK.now_ms() + 60_000
        store.schedule([ScheduleRequest("k", "o1", now, None, DAY)])
        script = store.conn.script(f"store_{operation}.lua")
        proxy.arm(script.sha.encode())
        if operation == "cancel":
            answer = store.cancel([CancelRequest("k", "o1", "req-1")])[0].result
            assert answer is CancelResult.CANCELLED  # not already_cancelled
        else:
            store.cancel([CancelRequest("k", "o1", "req-0")])
            answer2 = store.schedule([ScheduleRequest("k", "o1", now, None, DAY)])[0]
            assert answer2.result is ScheduleResult.CREATED  # not extended: a message is sent
            assert answer2.timeout.generation == 2
        assert proxy.dropped == 1  # the first reply really was lost after Redis applied it
    finally:
        store.close()
        proxy.close()


def test_sentinel_url_reaches_the_monitored_master(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sentinel = RedisSentinelServer(tmp_path, redis_server).start()
    try:
        store = open_store(fresh(sentinel.url), SYSTEM_CLOCK)
        now = SYSTEM_CLOCK.now_ms()
        assert (
            store.schedule([ScheduleRequest("k", "s", now, 1, DAY)])[0].result
            is ScheduleResult.CREATED
        )
        direct = open_store(f"{redis_server.url}?prefix={store.prefix}", SYSTEM_CLOCK)
        assert direct.get("k", "s") == store.get("k", "s") is not None
        store.close()
        direct.close()
    finally:
        sentinel.stop()


# -- plugin ---------------------------------------------------------------------------------------


def test_plugin_registers_every_scheme_for_both_roles_and_imports_no_sdk() -> None:
    from dtimeout.plugins import make_plugin_manager
    from dtimeout.registry import Registry

    registry = Registry.from_plugin_manager(make_plugin_manager(load_entrypoints=False))
    for scheme in ("redis", "rediss", "redis+cluster", "redis+sentinel"):
        assert registry.transports[scheme].name == registry.stores[scheme].name == "redis"
    code = (
        "import sys, dtimeout.providers.redis.plugin as p; "
        "from dtimeout.plugins import make_plugin_manager; "
        "from dtimeout.registry import Registry; "
        "Registry.from_plugin_manager(make_plugin_manager(load_entrypoints=False)); "
        "print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_opens_both_roles_from_one_url(redis_url: str) -> None:
    from dtimeout.plugins import make_plugin_manager
    from dtimeout.registry import Registry

    registry = Registry.from_plugin_manager(make_plugin_manager(load_entrypoints=False))
    assert isinstance(registry.open_store(fresh(redis_url), SYSTEM_CLOCK), RedisStore)
    assert isinstance(registry.open_transport(fresh(redis_url), SYSTEM_CLOCK), RedisTransport)
