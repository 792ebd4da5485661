"""Scheme → provider: which plugin serves ``redis://`` as a store, and opening it.

The registry asks every plugin's registration hooks once, with a ``register`` callback, and
keeps one :class:`ProviderInfo` per scheme and role. It is the single place that turns a URL
into a live Transport or Store, so the messages for the common mistakes live here too: an
unknown scheme gets a did-you-mean and the list of what is installed, a scheme whose plugin
failed to import says so, a provider that is only a transport is not offered as a store.

Two plugins claiming one scheme for one role is a configuration error naming both — but only for
that scheme. Building the registry records the conflict (``dtimeout providers`` lists it, and
the scheme is served by neither plugin); opening a URL of that scheme raises :class:`PluginError`
saying how to resolve it. Refusing to build the registry at all made one third-party package
break every command, including ``dtimeout providers``, the one that would have explained it.

URLs are never printed raw: :func:`mask_url` hides passwords and secret-looking query values.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import pluggy

from dtimeout.clock import Clock
from dtimeout.errors import (
    ConfigurationError,
    DtimeoutError,
    PluginError,
    UnknownSchemeError,
)
from dtimeout.interfaces import ProviderInfo, Store, Transport
from dtimeout.plugins import (
    DISABLE_ENV,
    DtimeoutPluginManager,
    PluginLoadFailure,
    make_plugin_manager,
    report_once,
)

Role = Literal["transport", "store"]

_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.\-]*$")

# Schemes served by optional distributions: a missing one says what to install.
KNOWN_EXTRAS: Mapping[str, str] = {
    "sqs": "pip install 'dtimeout[sqs]'",
    "azure-servicebus": "pip install 'dtimeout[azure]'",
}

_SECRET_QUERY_NAMES = re.compile(
    r"(pass|pwd|secret|token|key|sig|signature|credential|auth|sas)", re.IGNORECASE
)
_SECRET_PAIRS = re.compile(
    r"(?i)\b(SharedAccessKey|SharedAccessSignature|AccountKey|Password|Pwd)=([^;&]*)"
)


def mask_url(url: str) -> str:
    """``url`` with its password and secret-looking query values replaced by ``****``.

    Used for every URL that reaches a message, a log line or the terminal. Unparseable input is
    still scrubbed of ``key=value`` secrets (connection-string style) rather than echoed.
    """
    text = _SECRET_PAIRS.sub(lambda m: f"{m.group(1)}=****", url)
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        text = text.replace(f"{parts.netloc}", f"{user}:****@{hostinfo}", 1)
    if parts.query:
        masked_query = "&".join(_mask_pair(pair) for pair in parts.query.split("&"))
        text = text.replace(f"?{parts.query}", f"?{masked_query}", 1)
    return text


def _mask_pair(pair: str) -> str:
    name, sep, value = pair.partition("=")
    if sep and value and _SECRET_QUERY_NAMES.search(name):
        return f"{name}=****"
    return pair


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased; a ``ConfigurationError`` when there is none."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"{mask_url(str(url))!r} is not a provider URL (expected SCHEME://..., "
            "e.g. sqlite:///./.dtimeout/dtimeout.db or redis://localhost:6379/0)"
        )
    scheme = url.split("://", 1)[0].lower()
    if not _SCHEME_RE.match(scheme):
        raise ConfigurationError(f"{mask_url(url)!r} has an invalid URL scheme {scheme!r}")
    return scheme


@dataclass(frozen=True)
class SchemeConflict:
    """Two or more plugins registered the same scheme for the same role."""

    role: Role
    scheme: str
    claimants: tuple[ProviderInfo, ...]  # in registration order, each with plugin/distribution

    def message(self) -> str:
        """The one-line error: who claims the scheme, and how to resolve it."""
        who = " and ".join(_who(c.plugin, c.distribution) for c in self.claimants)
        # The core cannot be uninstalled; the other distributions can.
        dists = sorted(
            {c.distribution for c in self.claimants if c.distribution not in (None, "dtimeout")}
        )
        if len(dists) == 1:
            uninstall = f"uninstall {dists[0]} (pip uninstall {dists[0]})"
        elif dists:
            uninstall = f"uninstall one of them (pip uninstall {' or '.join(dists)})"
        else:
            uninstall = "uninstall one of them"
        example = next(
            (c.plugin for c in reversed(self.claimants) if c.distribution != "dtimeout"),
            self.claimants[-1].plugin,
        )
        return (
            f"two plugins claim the {self.role} scheme {self.scheme!r}: {who}; {uninstall}, "
            f"or block one with {DISABLE_ENV}={example}"
        )


@dataclass
class Registry:
    """The providers every loaded plugin registered, by role and scheme."""

    transports: dict[str, ProviderInfo] = field(default_factory=dict)
    stores: dict[str, ProviderInfo] = field(default_factory=dict)
    failures: list[PluginLoadFailure] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None
    conflicts: dict[tuple[Role, str], SchemeConflict] = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------
    # building

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        """Call both registration hooks of every plugin, each with its own ``register``.

        Each hook implementation is called on its own (instead of one ``pm.hook`` call) so the
        registry knows which plugin registered which scheme, and so one plugin whose hook
        raises, or registers something invalid, is recorded as a failure without hiding the
        others. Two plugins claiming one scheme for one role become a :class:`SchemeConflict`:
        listed in :attr:`failures`, and raised (naming both) when that scheme is opened.
        """
        registry = cls(plugin_manager=pm)
        if isinstance(pm, DtimeoutPluginManager):
            registry.failures.extend(pm.load_failures)
        registry._collect(pm, "transport")
        registry._collect(pm, "store")
        for conflict in registry.conflicts.values():
            table = registry._table(conflict.role)
            table.pop(conflict.scheme, None)  # served by neither: a silent winner would surprise
            failure = PluginLoadFailure(
                conflict.claimants[-1].plugin,
                conflict.claimants[-1].distribution,
                conflict.message(),
            )
            registry.failures.append(failure)
            report_once(failure, f"{conflict.message()}; {conflict.scheme}:// URLs cannot be used")
        return registry

    def _collect(self, pm: pluggy.PluginManager, role: Role) -> None:
        hook_name = f"dtimeout_register_{role}s"
        caller = getattr(pm.hook, hook_name)
        table = self._table(role)
        for impl in caller.get_hookimpls():  # registration order
            if impl.hookwrapper or impl.wrapper:
                continue  # a registration hook has nothing to wrap
            plugin_name = impl.plugin_name
            dist, version = _origin(pm, plugin_name)
            added: list[ProviderInfo] = []

            def register(
                info: ProviderInfo,
                _plugin: str = plugin_name,
                _dist: str | None = dist,
                _version: str | None = version,
                _added: list[ProviderInfo] = added,
            ) -> None:
                _added.append(self._check(role, info, _plugin, _dist, _version))

            try:
                impl.function(**{name: register for name in impl.argnames})
            except Exception as exc:
                # Half a registration is worse than none: nothing of this plugin is kept.
                text = " ".join(str(exc).split())
                error = (
                    text
                    if isinstance(exc, PluginError)
                    else f"{hook_name} raised {type(exc).__name__}: {text}"
                )
                self.failures.append(PluginLoadFailure(plugin_name, dist, error))
                continue
            for info in added:
                self._add(table, role, info)

    def _check(
        self,
        role: Role,
        info: ProviderInfo,
        plugin: str,
        dist: str | None,
        version: str | None,
    ) -> ProviderInfo:
        """Validate one registration; the entry as the registry keeps it."""
        if not isinstance(info, ProviderInfo):
            raise PluginError(
                f"plugin {plugin!r} passed {type(info).__name__} to register(); "
                "expected dtimeout.ProviderInfo"
            )
        scheme = info.scheme.lower()
        if not _SCHEME_RE.match(scheme):
            raise PluginError(f"plugin {plugin!r} registered an invalid {role} scheme {scheme!r}")
        if not callable(info.factory):
            raise PluginError(f"plugin {plugin!r} registered {role} {scheme!r} without a factory")
        return replace(info, scheme=scheme, plugin=plugin, distribution=dist, version=version)

    def _add(self, table: dict[str, ProviderInfo], role: Role, info: ProviderInfo) -> None:
        scheme = info.scheme
        conflict = self.conflicts.get((role, scheme))
        if conflict is not None:
            self.conflicts[(role, scheme)] = replace(
                conflict, claimants=(*conflict.claimants, info)
            )
            return
        existing = table.get(scheme)
        if existing is not None:
            self.conflicts[(role, scheme)] = SchemeConflict(role, scheme, (existing, info))
            return
        table[scheme] = info

    def _table(self, role: Role) -> dict[str, ProviderInfo]:
        return self.transports if role == "transport" else self.stores

    # ----------------------------------------------------------------------------------------
    # resolving

    def resolve(self, url: str, role: Role) -> ProviderInfo:
        """The provider serving ``url`` in ``role``, or a one-line ``ConfigurationError``."""
        scheme = scheme_of(url)
        conflict = self.conflicts.get((role, scheme))
        if conflict is not None:
            raise PluginError(conflict.message())
        table = self._table(role)
        info = table.get(scheme)
        if info is not None:
            return info
        raise UnknownSchemeError(self._unknown_message(url, scheme, role))

    def _unknown_message(self, url: str, scheme: str, role: Role) -> str:
        other: Role = "store" if role == "transport" else "transport"
        known = sorted(self._table(role))
        known_text = ", ".join(known) if known else "none"
        head = f"unknown {role} scheme {scheme!r} in {mask_url(url)}"
        if scheme in self._table(other):
            provider = self._table(other)[scheme]
            return f"{head}: {provider.name!r} is a {other} only; {role} schemes: {known_text}"
        broken = [f for f in self.failures if _plausibly_serves(f, scheme)]
        if broken:
            return f"{head}: {broken[0].describe()}"
        if scheme in KNOWN_EXTRAS:
            return f"{head}: its provider is not installed ({KNOWN_EXTRAS[scheme]})"
        close = difflib.get_close_matches(scheme, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{head}{hint}; known {role} schemes: {known_text}"

    def open_transport(self, url: str, clock: Clock) -> Transport:
        """Build the transport for ``url`` (the plugin's factory imports its SDK now)."""
        obj = self._open(url, clock, "transport")
        if not isinstance(obj, Transport):
            raise PluginError(
                f"the transport factory for {scheme_of(url)!r} returned "
                f"{type(obj).__name__}, not a dtimeout Transport"
            )
        return obj

    def open_store(self, url: str, clock: Clock) -> Store:
        """Build the store for ``url``."""
        obj = self._open(url, clock, "store")
        if not isinstance(obj, Store):
            raise PluginError(
                f"the store factory for {scheme_of(url)!r} returned "
                f"{type(obj).__name__}, not a dtimeout Store"
            )
        return obj

    def _open(self, url: str, clock: Clock, role: Role) -> Any:
        info = self.resolve(url, role)
        try:
            return info.factory(url, clock)
        except DtimeoutError:
            raise
        except Exception as exc:
            # A provider should translate its errors; when one leaks, keep it one line, chained,
            # and scrubbed of the URL's secrets.
            detail = _scrub(" ".join(str(exc).split()), url)
            raise ConfigurationError(
                f"cannot open {role} {mask_url(url)}: {type(exc).__name__}: {detail}"
            ) from exc


def _origin(pm: pluggy.PluginManager, plugin_name: str) -> tuple[str | None, str | None]:
    if isinstance(pm, DtimeoutPluginManager):
        origin = pm.origin_of(plugin_name)
        if origin is not None:
            return origin.distribution, origin.version
    return None, None


def _who(plugin: str, dist: str | None) -> str:
    return f"plugin {plugin!r} (from {dist})" if dist else f"plugin {plugin!r}"


def _plausibly_serves(failure: PluginLoadFailure, scheme: str) -> bool:
    """A failed plugin whose name or distribution mentions the scheme (``sqs`` ↔ dtimeout-sqs)."""
    base = scheme.split("+", 1)[0]
    if len(base) < 3:
        return False
    names = (failure.name.lower(), (failure.distribution or "").lower())
    return any(base in n or n.endswith(base) for n in names if n)


def _scrub(text: str, url: str) -> str:
    """Remove the URL's password and secret query values from ``text``."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "****")
    for pair in urlsplit(url).query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and _SECRET_QUERY_NAMES.search(name):
            text = text.replace(value, "****")
    return text.replace(url, mask_url(url))


_default_lock = threading.Lock()
_default_registry: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry of everything installed, built on first use.

    Building it imports every plugin and logs each failure; doing that once per process (not
    once per ``Timeouts()``) keeps the report of a broken plugin to one line.
    """
    global _default_registry
    with _default_lock:
        if _default_registry is None:
            _default_registry = Registry.from_plugin_manager(make_plugin_manager())
        return _default_registry


def reset_default_registry() -> None:
    """Forget the cached registry (tests that install plugins at run time)."""
    global _default_registry
    with _default_lock:
        _default_registry = None
