"""The ``sqlite`` plugin module: registered through the hooks, from the core's default list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from dtimeout import hookspecs
from dtimeout.clock import FakeClock
from dtimeout.errors import ConfigurationError
from dtimeout.interfaces import ProviderInfo
from dtimeout.plugins import DEFAULT_PLUGINS, make_plugin_manager
from dtimeout.providers import sqlite as plugin
from dtimeout.providers.sqlite_store import SqliteStore
from dtimeout.providers.sqlite_transport import SqliteTransport
from dtimeout.registry import Registry


def test_the_module_registers_scheme_sqlite_for_both_roles() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="sqlite")
    transports: list[ProviderInfo] = []
    stores: list[ProviderInfo] = []
    pm.hook.dtimeout_register_transports(register=transports.append)
    pm.hook.dtimeout_register_stores(register=stores.append)
    assert [(i.scheme, i.name) for i in transports] == [("sqlite", "sqlite")]
    assert [(i.scheme, i.name) for i in stores] == [("sqlite", "sqlite")]


def test_it_is_a_default_plugin_and_opens_both_roles_on_one_file(tmp_path: Path) -> None:
    assert "dtimeout.providers.sqlite" in DEFAULT_PLUGINS
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entrypoints=False))
    url = f"sqlite:///{tmp_path}/both.db"
    store = registry.open_store(url, FakeClock())
    transport = registry.open_transport(url, FakeClock())
    try:
        assert isinstance(store, SqliteStore) and isinstance(transport, SqliteTransport)
        assert registry.stores["sqlite"].distribution == "dtimeout"
    finally:
        store.close()
        transport.close()
    with pytest.raises(ConfigurationError, match="unknown sqlite URL option"):
        registry.open_store(f"{url}?bogus=1", FakeClock())


def test_loading_the_plugin_imports_no_provider_code() -> None:
    """The plugin module stays cheap: store and transport load only when a URL is opened."""
    code = (
        "import sys, dtimeout.providers.sqlite\n"
        "loaded = [m for m in sys.modules if m.startswith('dtimeout.providers.sqlite_')]\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "['dtimeout.providers.sqlite_db']"
