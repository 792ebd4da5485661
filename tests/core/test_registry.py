"""Scheme resolution, the one-line errors around it, and URL masking."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dtimeout import FakeClock, ProviderInfo, Store, Transport, hookimpl
from dtimeout.errors import ConfigurationError, PluginError, UnknownSchemeError
from dtimeout.plugins import PluginLoadFailure, make_plugin_manager
from dtimeout.providers import memory
from dtimeout.registry import Registry, default_registry, mask_url, reset_default_registry


class _TransportOnly:
    @hookimpl
    def dtimeout_register_transports(self, register: Callable[[ProviderInfo], None]) -> None:
        register(ProviderInfo("queueonly", "queue-only", memory.open_transport))


class _LeakyFactory:
    """A provider that forgets to translate its SDK's error (and puts the URL in it)."""

    @hookimpl
    def dtimeout_register_stores(self, register: Callable[[ProviderInfo], None]) -> None:
        def factory(url: str, clock: object) -> Store:
            raise OSError(f"connect failed for {url}")

        register(ProviderInfo("leaky", "leaky", factory))

    @hookimpl
    def dtimeout_register_transports(self, register: Callable[[ProviderInfo], None]) -> None:
        register(ProviderInfo("notatransport", "wrong", lambda url, clock: object()))


@pytest.fixture
def registry() -> Registry:
    pm = make_plugin_manager(load_entrypoints=False, default_plugins=["dtimeout.providers.memory"])
    pm.register(_TransportOnly(), name="queue-only-plugin")
    pm.register(_LeakyFactory(), name="leaky-plugin")
    return Registry.from_plugin_manager(pm)


def test_open_by_scheme(registry: Registry) -> None:
    clock = FakeClock()
    transport = registry.open_transport("memory://", clock)
    store = registry.open_store("MEMORY://", clock)
    assert isinstance(transport, Transport) and isinstance(store, Store)
    assert transport.clock is clock


def test_unknown_scheme_suggests_and_lists(registry: Registry) -> None:
    with pytest.raises(UnknownSchemeError) as info:
        registry.open_store("memroy://", FakeClock())
    message = str(info.value)
    assert "did you mean 'memory'?" in message
    assert "known store schemes: leaky, memory" in message
    assert "\n" not in message
    assert isinstance(info.value, ConfigurationError)  # exit 2 in the CLI


def test_unknown_scheme_without_a_close_match(registry: Registry) -> None:
    with pytest.raises(UnknownSchemeError) as info:
        registry.open_transport("zzz://x", FakeClock())
    assert "did you mean" not in str(info.value)
    assert "known transport schemes: memory, notatransport, queueonly" in str(info.value)


def test_transport_only_scheme_asked_as_a_store(registry: Registry) -> None:
    with pytest.raises(UnknownSchemeError, match="'queue-only' is a transport only"):
        registry.open_store("queueonly://q", FakeClock())


def test_scheme_of_an_optional_distribution_names_the_install_command(registry: Registry) -> None:
    with pytest.raises(UnknownSchemeError, match=r"pip install 'dtimeout\[sqs\]'"):
        registry.open_transport("sqs://orders", FakeClock())


def test_scheme_of_a_plugin_that_failed_to_load_says_so(registry: Registry) -> None:
    registry.failures.append(PluginLoadFailure("rabbitmq", "dtimeout-rabbitmq", "ImportError: x"))
    with pytest.raises(UnknownSchemeError, match=r"'rabbitmq' .*failed to load: ImportError: x"):
        registry.open_transport("rabbitmq://guest:pw@host/vhost", FakeClock())


def test_not_a_url(registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="is not a provider URL"):
        registry.open_store("./data.db", FakeClock())


def test_leaked_factory_error_is_one_masked_line(registry: Registry) -> None:
    with pytest.raises(ConfigurationError) as info:
        registry.open_store("leaky://admin:hunter2@db/0?token=t0ps3cret", FakeClock())
    message = str(info.value)
    assert "hunter2" not in message and "t0ps3cret" not in message
    assert "OSError" in message and "admin:****@db" in message
    assert isinstance(info.value.__cause__, OSError)


def test_factory_returning_the_wrong_type(registry: Registry) -> None:
    with pytest.raises(PluginError, match="returned object, not a dtimeout Transport"):
        registry.open_transport("notatransport://", FakeClock())


def test_invalid_scheme_registration_is_refused() -> None:
    class Bad:
        @hookimpl
        def dtimeout_register_stores(self, register: Callable[[ProviderInfo], None]) -> None:
            register(ProviderInfo("fine", "bad", memory.open_store))
            register(ProviderInfo("no spaces", "bad", memory.open_store))

    pm = make_plugin_manager(load_entrypoints=False, default_plugins=["dtimeout.providers.memory"])
    pm.register(Bad(), name="bad")
    registry = Registry.from_plugin_manager(pm)  # one bad plugin does not stop the others
    assert "memory" in registry.stores
    assert "fine" not in registry.stores  # nothing of a plugin that registered badly
    [failure] = registry.failures
    assert failure.name == "bad" and "invalid store scheme 'no spaces'" in failure.error


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@localhost:6379/0", "redis://:****@localhost:6379/0"),
        ("rediss://user:s3cret@host:6380/1", "rediss://user:****@host:6380/1"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("sqlite:///./.dtimeout/dtimeout.db", "sqlite:///./.dtimeout/dtimeout.db"),
        (
            "sqs://orders?region=eu-west-1&aws_secret_access_key=s3cret",
            "sqs://orders?region=eu-west-1&aws_secret_access_key=****",
        ),
        ("redis://h/0?password=s3cret&db=2", "redis://h/0?password=****&db=2"),
        (
            "redis+sentinel://:s3cret@h1:26379,h2:26379/mymaster",
            "redis+sentinel://:****@h1:26379,h2:26379/mymaster",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s3cret=",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=****",
        ),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected
    assert "s3cret" not in mask_url(url)


def test_default_registry_is_built_once() -> None:
    reset_default_registry()
    try:
        first = default_registry()
        assert default_registry() is first
        assert "memory" in first.transports
    finally:
        reset_default_registry()
