"""The plugin contract: every hook a dtimeout plugin may implement.

Plugins are modules (or objects) with functions decorated by ``dtimeout.hookimpl``; they reach
dtimeout through the entry-point group ``dtimeout`` or, for the built-ins, through
``dtimeout.plugins.DEFAULT_PLUGINS``. Hook names start with ``dtimeout_``. Every spec below is
documented in ``docs/plugin-hooks.md`` with its exact signature (a test checks that).

Registration hooks hand the plugin a ``register`` callback instead of asking it to return live
objects: a plugin declares what it offers and a factory; nothing is connected at load time.
Event hooks are for observers (metrics, tracing, audit). They are called synchronously on the
thread that made the transition, after the store answered; an exception in an observer is logged
and never changes the outcome of the operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from dtimeout.interfaces import ProviderInfo
from dtimeout.model import CancelResult, DueTimeout, Timeout

PROJECT_NAME = "dtimeout"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    """Declare the transports this plugin provides.

    Called once when a plugin manager is built. Call ``register(ProviderInfo(scheme=…,
    name=…, factory=…))`` once per URL scheme. ``factory(url, clock)`` is called only when a
    user selects that scheme; import the broker SDK inside it. Registering a scheme that another
    plugin already registered for the same role is refused with a ``PluginError`` naming both.
    """


@hookspec
def dtimeout_register_stores(register: Callable[[ProviderInfo], None]) -> None:
    """Declare the stores this plugin provides.

    Same contract as :func:`dtimeout_register_transports`, for the store role.
    """


@hookspec
def dtimeout_register_commands(app: Any) -> None:
    """Add commands to the ``dtimeout`` CLI.

    ``app`` is the root ``typer.Typer``; add commands or sub-apps to it. Called once when the CLI
    is built, after the built-in commands exist.
    """


@hookspec
def dtimeout_timeout_scheduled(timeout: Timeout, result: str) -> None:
    """A timeout was scheduled (``result`` is ``created``, ``advanced`` or ``extended``).

    Called after the store write and, when one was needed, after the message was sent.
    """


@hookspec
def dtimeout_timeout_cancelled(kind: str, key: str, result: CancelResult) -> None:
    """A cancel was answered, with whatever it answered (``cancelled``, ``too_late``, …)."""


@hookspec
def dtimeout_timeout_fired(timeout: DueTimeout, lateness_ms: int, duration_ms: int) -> None:
    """A handler returned and the timeout is FIRED.

    ``lateness_ms`` is how long after its due time the handler started; ``duration_ms`` how long
    it ran.
    """


@hookspec
def dtimeout_timeout_failed(timeout: DueTimeout, error: BaseException, will_retry: bool) -> None:
    """A handler raised. ``will_retry`` is False when the timeout went DEAD."""


@hookspec
def dtimeout_message_dead_lettered(message_id: str, reason: str) -> None:
    """A message was moved to the transport's dead-letter place, with the reason."""


@hookspec
def dtimeout_message_dropped(message_id: str, reason: str) -> None:
    """A delivered message was acknowledged without running a handler.

    ``reason`` is one of ``stale``, ``cancelled``, ``fired``, ``missing`` (orphan dropped) or
    ``duplicate``.
    """
