"""What every command shares: the global options, the settings, the registry, output helpers.

The root callback stores a :class:`CliState` in ``ctx.obj``; commands get it with
:func:`get_state`. Settings and the registry are built on first use, so ``--help`` works even
when the environment holds a bad value, and a command that needs neither never pays for them.
Third-party commands added through ``dtimeout_register_commands`` use the same helpers.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy
import typer

from dtimeout.config import Settings, load_settings
from dtimeout.registry import Registry

if TYPE_CHECKING:
    from dtimeout.app import Timeouts


@dataclass
class CliState:
    """The global options as given (``None`` = not given) and what is built from them."""

    plugin_manager: pluggy.PluginManager
    transport: str | None = None
    store: str | None = None
    log_level: str | None = None
    _settings: Settings | None = field(default=None, repr=False)
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                transport=self.transport, store=self.store, log_level=self.log_level
            )
            logging.getLogger().setLevel(self._settings.log_level)
        return self._settings

    def settings_with(self, **overrides: Any) -> Settings:
        """Settings with command options on top (e.g. ``run consume --concurrency``)."""
        return load_settings(
            transport=self.transport, store=self.store, log_level=self.log_level, **overrides
        )

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.from_plugin_manager(self.plugin_manager)
        return self._registry

    def open_timeouts(
        self, transport: str | None = None, store: str | None = None, **options: Any
    ) -> Timeouts:
        """A ``Timeouts`` on the configured providers (or the given URLs), sharing our plugins."""
        from dtimeout.app import Timeouts

        settings = self.settings
        self.registry  # noqa: B018 - refuse duplicate schemes before anything connects
        kwargs: dict[str, Any] = {
            "retention": settings.retention,
            "max_attempts": settings.max_attempts,
            "lease": settings.lease,
            "orphans": settings.orphans,
        }
        kwargs.update(options)
        return Timeouts(
            transport or settings.transport,
            store or settings.store,
            plugin_manager=self.plugin_manager,
            **kwargs,
        )


def get_state(ctx: typer.Context) -> CliState:
    """The state the root callback stored (a bare one when a command runs on its own)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        from dtimeout.plugins import make_plugin_manager

        root.obj = CliState(plugin_manager=make_plugin_manager())
    return root.obj


def print_json(data: Any) -> None:
    """Machine output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def echo(text: str = "") -> None:
    """Human output: a plain line on stdout (flushed, so piped output is live)."""
    print(text, flush=True)


def render_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A table: boxed with rich on a terminal, tab-separated lines (header first) when piped.

    Piped output stays one record per line and never wraps, so ``grep``/``cut`` and tests can
    read it; people at a terminal get the readable version.
    """
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title or None)
        for header in headers:
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    echo("\t".join(headers))
    for row in rows:
        echo("\t".join(row))
