"""The plugin: found through the ``dtimeout`` entry point, cheap to load, clear when the SDK is
missing, and a factory that builds the transport from a URL without touching the network."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dtimeout.clock import FakeClock
from dtimeout.errors import ConfigurationError, MissingDependencyError
from dtimeout.plugins import make_plugin_manager
from dtimeout.registry import Registry
from dtimeout_azure import plugin
from dtimeout_azure.settings import CONNECTION_STRING_ENV
from dtimeout_azure.transport import AzureServiceBusTransport

CONN = "Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=k"


def test_registered_from_the_dtimeout_azure_distribution() -> None:
    registry = Registry.from_plugin_manager(make_plugin_manager())
    info = registry.transports["azure-servicebus"]
    assert (info.name, info.distribution) == ("azure-servicebus", "dtimeout-azure")
    assert "azure-servicebus" not in registry.stores  # a transport only


def test_the_entry_module_does_not_import_the_sdk() -> None:
    code = (
        "import sys, dtimeout_azure.plugin; "
        "print(sorted(m for m in sys.modules if m == 'azure' or m.startswith('azure.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_missing_sdk_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, CONN)
    monkeypatch.delitem(sys.modules, "dtimeout_azure.transport")
    monkeypatch.setitem(sys.modules, "azure.servicebus", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'dtimeout\[azure\]'"):
        plugin.open_transport("azure-servicebus://my-ns/orders", FakeClock())


def test_a_bad_url_is_reported_before_the_sdk_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.servicebus", None)
    with pytest.raises(ConfigurationError, match="must name a queue"):
        plugin.open_transport("azure-servicebus://my-ns", FakeClock())


def test_factory_builds_an_unconnected_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, CONN)
    registry = Registry.from_plugin_manager(make_plugin_manager())
    transport = registry.open_transport(
        "azure-servicebus://my-ns/orders?lock_renewal=on", FakeClock()
    )
    try:
        assert isinstance(transport, AzureServiceBusTransport)
        assert transport.capabilities.native_cancel and transport.capabilities.max_delay_ms is None
        assert transport.where == "my-ns.servicebus.windows.net/orders"
        assert transport._renewer is not None  # the SDK's AutoLockRenewer
    finally:
        transport.close()
