"""URL parsing of the Redis provider: the four schemes, options, and refusals by name."""

from __future__ import annotations

import pytest

from dtimeout.errors import ConfigurationError
from dtimeout.providers.redis import keys as K
from dtimeout.providers.redis.settings import PASSWORD_ENV, parse_url


def test_standalone_defaults() -> None:
    s = parse_url("redis://localhost")
    assert (s.hosts, s.db, s.prefix, s.shards, s.ssl) == (
        (("localhost", 6379),),
        0,
        "dtimeout",
        1,
        False,
    )
    assert s.retries >= 1 and s.health_check_interval > 0


def test_user_password_db_and_options() -> None:
    s = parse_url(
        "redis://app:s%40cret@10.0.0.5:6380/3?prefix=orders&socket_timeout=500ms"
        "&health_check_interval=1m&retries=5&poll_interval=0.02&max_connections=20"
    )
    assert (s.username, s.password, s.hosts, s.db) == ("app", "s@cret", (("10.0.0.5", 6380),), 3)
    assert (s.prefix, s.socket_timeout, s.health_check_interval) == ("orders", 0.5, 60.0)
    assert (s.retries, s.poll_interval, s.max_connections) == (5, 0.02, 20)


def test_tls_scheme_and_file_options_with_aliases() -> None:
    s = parse_url("rediss://h:6390?ca=/c/ca.pem&cert=/c/me.pem&key=/c/me.key&ssl_cert_reqs=none")
    assert s.ssl and (s.ssl_ca_certs, s.ssl_certfile, s.ssl_keyfile) == (
        "/c/ca.pem",
        "/c/me.pem",
        "/c/me.key",
    )
    kwargs = s.connection_kwargs()
    assert kwargs["ssl"] is True and kwargs["ssl_check_hostname"] is False  # no verification


def test_cluster_takes_several_hosts_and_defaults_to_16_shards() -> None:
    s = parse_url("redis+cluster://a:7000,b:7001,[::1]:7002")
    assert s.cluster and s.shards == 16
    assert s.hosts == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert parse_url("redis+cluster://a:7000?shards=4").shards == 4


def test_sentinel_needs_a_master_name() -> None:
    s = parse_url("redis+sentinel://s1,s2:26380/2?master=mymaster&sentinel_password=x")
    assert s.sentinel and s.master == "mymaster" and s.db == 2
    assert s.hosts == (("s1", 26379), ("s2", 26380))
    with pytest.raises(ConfigurationError, match="master=NAME"):
        parse_url("redis+sentinel://s1")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://h?shard=3", "unknown Redis URL option 'shard' \\(did you mean 'shards'"),
        ("redis://h:notaport", "port must be an integer"),
        ("redis://h:70000", "port is out of range"),
        ("redis://h?socket_timeout=soon", "socket_timeout must be a duration"),
        ("redis://h?shards=0", "shards is out of range"),
        ("redis://h?ssl=maybe", "ssl must be true or false"),
        ("redis://h?prefix=a{b}", "prefix"),
        ("redis://a,b", "takes one host"),
        ("redis+cluster://a/2", "only database 0"),
        ("redis://", "has no host"),
        ("http://h", "not a Redis URL"),
    ],
)
def test_bad_urls_are_refused_naming_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("{", r"\{")):
        parse_url(url)


def test_password_from_environment_and_never_displayed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    s = parse_url("redis://h:1/2")
    assert s.password == "from-env"
    assert "from-env" not in s.display() and "from-env" not in repr(s)
    shown = parse_url("redis://u:topsecret@h:1").display()
    assert shown == "redis://u:****@h:1" and "topsecret" not in shown


def test_key_layout_keeps_one_slot_per_script() -> None:
    assert K.record_key("p", "payment", "o-1") == "p:t:{payment:o-1}"
    assert K.identity_of("p", "p:t:{payment:o:1}") == ("payment", "o:1")
    shard = K.ShardKeys("p", 3)
    tags = {name.split("}")[0] + "}" for name in shard.all()}
    assert tags == {"{p:q:3}"}
    assert {K.shard_of(f"k:{i}:1", 16) for i in range(200)} == set(range(16))
    assert K.shard_of("anything", 1) == 0


def test_every_script_opens_with_a_header_naming_keys_and_argv() -> None:
    from dtimeout.providers.redis import store, transport
    from dtimeout.providers.redis.connection import script_source

    for name in (*store.SCRIPTS, *transport.SCRIPTS):
        own = script_source(name).split(f"-- {name}:", 1)
        assert len(own) == 2, f"{name} has no header"
        header = own[1].split("\n\n", 1)[0]
        assert "KEYS" in header and "ARGV[1]" in header and "Returns" in header, name
