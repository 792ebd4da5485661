"""Building the plugin manager: the built-in providers and the ``dtimeout`` entry-point group.

The manager is built by :func:`make_plugin_manager`, never at import, so tests build fresh ones
and the CLI builds exactly one. Built-in providers are plugins like any other: they are listed in
:data:`DEFAULT_PLUGINS` and register through the same hooks as ``dtimeout-sqs`` or a third
party's ``dtimeout-rabbitmq``.

Why entry points are loaded one by one instead of with ``pm.load_setuptools_entrypoints``: that
call stops at the first plugin that fails to import, taking the whole CLI down with it. Here a
failing plugin becomes a :class:`PluginLoadFailure` (its name, its distribution, the error),
is logged once, and is skipped; ``dtimeout providers`` shows it and everything else keeps
working.

``DTIMEOUT_DISABLE_PLUGINS=name1,name2`` blocks plugins by name (the ``plugin`` column of
``dtimeout providers``: an entry-point name such as ``sqs``, or a built-in's module name) with
pluggy's public ``set_blocked``: a blocked plugin is neither imported nor registered. It is the
way out when two installed plugins claim one URL scheme and neither can be uninstalled.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

import pluggy

from dtimeout import hookspecs
from dtimeout.hookspecs import PROJECT_NAME

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dtimeout"
CORE_DISTRIBUTION = "dtimeout"
DISABLE_ENV = "DTIMEOUT_DISABLE_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "dtimeout.providers.memory",
    "dtimeout.providers.sqlite",
    "dtimeout.providers.redis.plugin",
)


@dataclass(frozen=True, slots=True)
class PluginLoadFailure:
    """A plugin that could not be imported or registered; reported, then skipped."""

    name: str
    distribution: str | None
    error: str

    def describe(self) -> str:
        origin = f" (from {self.distribution})" if self.distribution else ""
        return f"plugin {self.name!r}{origin} failed to load: {self.error}"


@dataclass(frozen=True, slots=True)
class PluginOrigin:
    """Where a registered plugin came from: its distribution and that distribution's version."""

    name: str
    distribution: str | None
    version: str | None


_reported: set[PluginLoadFailure] = set()
_reported_lock = threading.Lock()


def reset_failure_reports() -> None:
    """Forget which failures were logged (tests that count log lines)."""
    with _reported_lock:
        _reported.clear()


def report_once(failure: PluginLoadFailure, text: str) -> None:
    """Log ``text`` as a warning the first time this process sees ``failure``, at DEBUG after.

    A process may build several managers and registries (the CLI builds one, a user's
    ``Timeouts()`` in ``run consume --app`` another); the user hears about a broken plugin
    once, and ``dtimeout providers`` shows it every time.
    """
    with _reported_lock:
        first = failure not in _reported
        _reported.add(failure)
    if first:
        logger.warning("%s", text)
    else:
        logger.debug("%s (reported before)", text)


def disabled_plugins(environ: dict[str, str] | None = None) -> list[str]:
    """The plugin names listed in ``DTIMEOUT_DISABLE_PLUGINS`` (comma- or space-separated)."""
    raw = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return [name for name in raw.replace(",", " ").split() if name]


class DtimeoutPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers load failures and each plugin's origin.

    Subclassing keeps us on pluggy's public surface: the extra state lives in our own
    attributes instead of in pluggy's private ones.
    """

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.load_failures: list[PluginLoadFailure] = []
        self.origins: dict[str, PluginOrigin] = {}

    def origin_of(self, plugin_name: str) -> PluginOrigin | None:
        return self.origins.get(plugin_name)

    def record_failure(self, failure: PluginLoadFailure) -> None:
        """Remember a failure and log it once per process.

        A process may build several managers (the CLI builds one, a user's ``Timeouts()`` in
        ``run consume --app`` another); the user hears about a broken plugin once, and
        ``dtimeout providers`` shows it every time.
        """
        if failure in self.load_failures:
            return
        self.load_failures.append(failure)
        report_once(failure, f"{failure.describe()}; skipped")


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    default_plugins: Iterable[str] = DEFAULT_PLUGINS,
) -> DtimeoutPluginManager:
    """A fresh manager with the hook specs, the built-in providers and (optionally) the
    plugins of the ``dtimeout`` entry-point group.

    ``load_entrypoints=False`` gives tests a manager that sees nothing installed on the machine;
    they register small inline plugin objects with ``pm.register(obj, name=...)``. Plugins named
    in ``DTIMEOUT_DISABLE_PLUGINS`` are blocked before anything is loaded.
    """
    pm = DtimeoutPluginManager()
    pm.add_hookspecs(hookspecs)
    for name in disabled_plugins():
        pm.set_blocked(name)
        logger.debug("plugin %r is blocked by %s", name, DISABLE_ENV)
    core_version = _distribution_version(CORE_DISTRIBUTION)
    for module_name in default_plugins:
        _load_module_plugin(pm, module_name, CORE_DISTRIBUTION, core_version)
    if load_entrypoints:
        load_entry_points(pm)
    return pm


def load_entry_points(pm: DtimeoutPluginManager, group: str = ENTRY_POINT_GROUP) -> None:
    """Import and register each entry point of ``group`` on its own; failures are recorded."""
    for ep in metadata.entry_points(group=group):
        dist = ep.dist
        dist_name = dist.name if dist is not None else None
        dist_version = dist.version if dist is not None else None
        if pm.is_blocked(ep.name):
            logger.debug("plugin %r is blocked; not loaded", ep.name)
            continue
        existing = pm.get_plugin(ep.name)
        if existing is not None:
            origin = pm.origin_of(ep.name)
            if origin is not None and origin.distribution == dist_name:
                continue  # the same distribution seen twice on sys.path: one plugin
            other = origin.distribution if origin is not None else "another plugin"
            pm.record_failure(
                PluginLoadFailure(
                    ep.name, dist_name, f"the plugin name {ep.name!r} is already used by {other}"
                )
            )
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            pm.record_failure(PluginLoadFailure(ep.name, dist_name, _describe(exc)))
            continue
        _register(pm, plugin, ep.name, dist_name, dist_version)


def _load_module_plugin(
    pm: DtimeoutPluginManager, module_name: str, dist: str, version: str | None
) -> None:
    if pm.get_plugin(module_name) is not None or pm.is_blocked(module_name):
        return
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        pm.record_failure(PluginLoadFailure(module_name, dist, _describe(exc)))
        return
    _register(pm, module, module_name, dist, version)


def _register(
    pm: DtimeoutPluginManager,
    plugin: object,
    name: str,
    dist: str | None,
    version: str | None,
) -> None:
    if pm.is_registered(plugin):
        # The same module object under another name (an entry point targeting a built-in, or
        # two entry points naming one module): registering it again would run its hooks twice.
        logger.debug("plugin %r is already registered as %r", name, pm.get_name(plugin))
        return
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # pluggy.PluginValidationError, a name clash, ...
        pm.record_failure(PluginLoadFailure(name, dist, _describe(exc)))
        return
    pm.origins[name] = PluginOrigin(name, dist, version)
    logger.debug("registered plugin %r from %s %s", name, dist, version)


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _describe(exc: BaseException) -> str:
    """One line: the exception type and its message (a traceback is for ``--debug`` logs)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
