"""The plugin manager: built-ins as plugins, entry points loaded one by one, failures isolated.

Managers are built fresh in every test. Entry points come from small distributions written into
a temporary ``sys.path`` entry (a ``*.dist-info`` folder is all ``importlib.metadata`` needs), so
the tests see exactly what a ``pip install`` would have left behind.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from dtimeout import FakeClock, ProviderInfo, hookimpl
from dtimeout.errors import PluginError
from dtimeout.plugins import (
    CORE_DISTRIBUTION,
    DEFAULT_PLUGINS,
    DtimeoutPluginManager,
    PluginLoadFailure,
    make_plugin_manager,
    reset_failure_reports,
)
from dtimeout.providers import memory
from dtimeout.registry import Registry

FakeDist = Callable[..., Path]


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDist:
    """Write an installed distribution with ``dtimeout`` entry points and its modules."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(
        name: str,
        version: str,
        entry_points: dict[str, str],
        modules: dict[str, str] | None = None,
    ) -> Path:
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
        lines = ["[dtimeout]"] + [f"{k} = {v}" for k, v in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for module, source in (modules or {}).items():
            path = root / (module.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source), encoding="utf-8")
        return root

    return make


def _only_memory() -> DtimeoutPluginManager:
    return make_plugin_manager(
        load_entrypoints=False, default_plugins=["dtimeout.providers.memory"]
    )


class _Scheme:
    """A small inline plugin serving one scheme in both roles."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    @hookimpl
    def dtimeout_register_transports(self, register: Callable[[ProviderInfo], None]) -> None:
        register(ProviderInfo(self.scheme, f"{self.scheme}-t", memory.open_transport))

    @hookimpl
    def dtimeout_register_stores(self, register: Callable[[ProviderInfo], None]) -> None:
        register(ProviderInfo(self.scheme, f"{self.scheme}-s", memory.open_store))


def test_each_call_builds_a_fresh_manager_with_the_hookspecs() -> None:
    a, b = _only_memory(), _only_memory()
    assert a is not b
    assert a.get_plugin("dtimeout.providers.memory") is memory
    assert b.get_plugin("dtimeout.providers.memory") is memory
    # The specs are there even for a hook no plugin implements yet.
    assert a.hook.dtimeout_register_commands.has_spec()


def test_importing_the_module_builds_nothing() -> None:
    code = (
        "import sys, dtimeout.plugins, dtimeout.registry; "
        "print(any(m.startswith('dtimeout.providers') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_builtins_are_plugins_from_the_core_distribution() -> None:
    assert "dtimeout.providers.memory" in DEFAULT_PLUGINS
    pm = _only_memory()
    registry = Registry.from_plugin_manager(pm)
    info = registry.transports["memory"]
    assert info.plugin == "dtimeout.providers.memory"
    assert info.distribution == CORE_DISTRIBUTION
    assert info.version and info.version[0].isdigit()
    assert registry.stores["memory"].distribution == CORE_DISTRIBUTION


def test_inline_plugin_registers_schemes() -> None:
    pm = _only_memory()
    pm.register(_Scheme("example"), name="inline-example")
    registry = Registry.from_plugin_manager(pm)
    assert registry.transports["example"].plugin == "inline-example"
    assert registry.transports["example"].distribution is None
    assert registry.stores["example"].name == "example-s"


def test_two_plugins_claiming_one_scheme_is_an_error_naming_both() -> None:
    pm = _only_memory()
    pm.register(_Scheme("memory"), name="impostor")
    pm.register(_Scheme("other"), name="bystander")
    registry = Registry.from_plugin_manager(pm)  # building does not fail: the conflict is scoped
    assert "memory" not in registry.transports and "memory" not in registry.stores
    assert registry.transports["other"].plugin == "bystander"  # other schemes keep working
    assert [f.name for f in registry.failures] == ["impostor", "impostor"]  # transport, store
    with pytest.raises(PluginError) as info:
        registry.open_store("memory://", FakeClock())
    message = str(info.value)
    assert "two plugins claim the store scheme 'memory'" in message
    assert "plugin 'dtimeout.providers.memory' (from dtimeout)" in message
    assert "plugin 'impostor'" in message
    assert "; uninstall one of them, or block" in message  # no distribution to name
    assert "DTIMEOUT_DISABLE_PLUGINS=impostor" in message
    assert "\n" not in message
    assert registry.failures[1].error == message


def test_a_scheme_conflict_is_logged_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    reset_failure_reports()
    with caplog.at_level(logging.WARNING, logger="dtimeout.plugins"):
        for _ in range(2):
            pm = _only_memory()
            pm.register(_Scheme("memory"), name="impostor")
            Registry.from_plugin_manager(pm)
    logged = [r.getMessage() for r in caplog.records if "two plugins claim" in r.getMessage()]
    assert len(logged) == 2  # the transport and the store, each once
    assert all("memory:// URLs cannot be used" in line for line in logged)


def test_disable_plugins_blocks_by_name(
    fake_dist: FakeDist, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dist(
        "dtimeout-clash",
        "2.0",
        {"clash": "dtimeout_clash_plugin"},
        {
            "dtimeout_clash_plugin": """
            from dtimeout import FakeClock, ProviderInfo, hookimpl
            from dtimeout.providers import memory

            @hookimpl
            def dtimeout_register_stores(register):
                register(ProviderInfo("sqlite", "not-sqlite", memory.open_store))
            """
        },
    )
    registry = Registry.from_plugin_manager(make_plugin_manager())
    with pytest.raises(
        PluginError, match=r"uninstall dtimeout-clash \(pip uninstall dtimeout-clash\)"
    ):
        registry.open_store("sqlite:///x.db", FakeClock())
    assert "sqlite" in registry.transports  # only the store role is in conflict

    monkeypatch.setenv("DTIMEOUT_DISABLE_PLUGINS", "clash, somethingelse")
    pm = make_plugin_manager()
    assert pm.get_plugin("clash") is None and pm.is_blocked("clash")
    unblocked = Registry.from_plugin_manager(pm)
    assert unblocked.stores["sqlite"].plugin == "dtimeout.providers.sqlite"
    assert unblocked.failures == []

    monkeypatch.setenv("DTIMEOUT_DISABLE_PLUGINS", "dtimeout.providers.sqlite")
    builtin_blocked = Registry.from_plugin_manager(make_plugin_manager())
    assert builtin_blocked.stores["sqlite"].plugin == "clash"
    assert "sqlite" not in builtin_blocked.transports


def test_a_plugin_whose_registration_hook_raises_is_a_failure_not_a_crash() -> None:
    class Exploding:
        @hookimpl
        def dtimeout_register_transports(self, register: Callable[[ProviderInfo], None]) -> None:
            register(ProviderInfo("half", "half", memory.open_transport))
            raise RuntimeError("boom")

    pm = _only_memory()
    pm.register(Exploding(), name="exploding")
    registry = Registry.from_plugin_manager(pm)
    assert "memory" in registry.transports
    assert "half" not in registry.transports  # half a registration is forgotten
    assert [f.name for f in registry.failures] == ["exploding"]
    assert "RuntimeError: boom" in registry.failures[0].error


def test_registering_something_else_than_providerinfo_is_refused() -> None:
    class Wrong:
        @hookimpl
        def dtimeout_register_stores(self, register: Callable[[object], None]) -> None:
            register({"scheme": "x"})

    pm = _only_memory()
    pm.register(Wrong(), name="wrong")
    registry = Registry.from_plugin_manager(pm)
    assert "memory" in registry.stores
    [failure] = registry.failures
    assert failure.name == "wrong" and "'wrong' passed dict" in failure.error


def test_entry_point_plugin_records_distribution_and_version(fake_dist: FakeDist) -> None:
    fake_dist(
        "dtimeout-fake",
        "1.2.3",
        {"fake": "dtimeout_fake_plugin"},
        {
            "dtimeout_fake_plugin": """
            from dtimeout import FakeClock, ProviderInfo, hookimpl
            from dtimeout.providers import memory

            @hookimpl
            def dtimeout_register_transports(register):
                register(ProviderInfo("fake", "fake", memory.open_transport))
            """
        },
    )
    registry = Registry.from_plugin_manager(make_plugin_manager())
    info = registry.transports["fake"]
    assert (info.plugin, info.distribution, info.version) == ("fake", "dtimeout-fake", "1.2.3")


def test_broken_entry_point_is_reported_once_and_skipped(
    fake_dist: FakeDist, caplog: pytest.LogCaptureFixture
) -> None:
    fake_dist(
        "dtimeout-broken",
        "0.0.1",
        {"broken": "dtimeout_broken_plugin"},
        {"dtimeout_broken_plugin": "raise ImportError('needs libfoo 9')\n"},
    )
    reset_failure_reports()
    with caplog.at_level(logging.WARNING, logger="dtimeout.plugins"):
        pm = make_plugin_manager()
        make_plugin_manager()  # a second manager in the same process: no second report
    registry = Registry.from_plugin_manager(pm)
    assert "memory" in registry.transports
    broken = [f for f in registry.failures if f.name == "broken"]
    assert broken == [PluginLoadFailure("broken", "dtimeout-broken", "ImportError: needs libfoo 9")]
    logged = [r for r in caplog.records if "needs libfoo 9" in r.getMessage()]
    assert len(logged) == 1
    assert pm.get_plugin("broken") is None


def test_entry_point_targeting_a_builtin_does_not_register_it_twice(fake_dist: FakeDist) -> None:
    fake_dist("dtimeout-again", "1.0", {"again": "dtimeout.providers.memory"})
    pm = make_plugin_manager()
    # Registered twice, the memory hooks would run twice and claim "memory" twice.
    registry = Registry.from_plugin_manager(pm)
    assert registry.transports["memory"].plugin == "dtimeout.providers.memory"
    assert pm.get_plugin("again") is None


def test_two_distributions_using_one_plugin_name(fake_dist: FakeDist) -> None:
    source = """
    from dtimeout import FakeClock, ProviderInfo, hookimpl
    from dtimeout.providers import memory

    @hookimpl
    def dtimeout_register_stores(register):
        register(ProviderInfo("{scheme}", "{scheme}", memory.open_store))
    """
    fake_dist(
        "dtimeout-one",
        "1.0",
        {"same": "dtimeout_one"},
        {"dtimeout_one": source.format(scheme="one")},
    )
    fake_dist(
        "dtimeout-two",
        "1.0",
        {"same": "dtimeout_two"},
        {"dtimeout_two": source.format(scheme="two")},
    )
    registry = Registry.from_plugin_manager(make_plugin_manager())
    served = {"one", "two"} & set(registry.stores)
    assert len(served) == 1  # the first one wins; the second is named as a failure
    clash = [f for f in registry.failures if f.name == "same"]
    assert len(clash) == 1 and "already used" in clash[0].error


def test_invalid_hook_implementation_is_a_load_failure(fake_dist: FakeDist) -> None:
    fake_dist(
        "dtimeout-typo",
        "0.1",
        {"typo": "dtimeout_typo"},
        {
            "dtimeout_typo": """
            from dtimeout import hookimpl

            @hookimpl
            def dtimeout_register_stores(regster):
                pass
            """
        },
    )
    registry = Registry.from_plugin_manager(make_plugin_manager())
    failure = next(f for f in registry.failures if f.name == "typo")
    assert failure.distribution == "dtimeout-typo"
    assert "regster" in failure.error


def test_cli_providers_lists_the_others_and_names_the_broken_one(
    fake_dist: FakeDist, capsys: pytest.CaptureFixture[str]
) -> None:
    from dtimeout.cli import main

    fake_dist(
        "dtimeout-broken",
        "0.0.1",
        {"broken": "dtimeout_broken_plugin"},
        {"dtimeout_broken_plugin": "raise RuntimeError('cannot start')\n"},
    )
    assert main(["providers", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    schemes = {(p["scheme"], p["role"]) for p in data["providers"]}
    assert {("memory", "transport"), ("memory", "store")} <= schemes
    assert {
        "name": "broken",
        "distribution": "dtimeout-broken",
        "error": "RuntimeError: cannot start",
    } in data["failures"]

    assert main(["providers"]) == 0
    text = capsys.readouterr().out
    assert "memory" in text and "broken" in text and "cannot start" in text
