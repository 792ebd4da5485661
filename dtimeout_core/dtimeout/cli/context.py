"""What every command shares: the global options, the settings, the registry, output helpers.

The root callback stores a :class:`CliState` in ``ctx.obj``; commands get it with
:func:`get_state`. Settings and the registry are built on first use, so ``--help`` works even
when the environment holds a bad value, and a command that needs neither never pays for them.
Third-party commands added through ``dtimeout_register_commands`` use the same helpers.

One-shot commands (``schedule``, ``cancel``, ``status``, ``list``) differ from the long-running
ones in two ways, both decided in :meth:`CliState.open_timeouts`:

* a short retry policy (:data:`ONE_SHOT_RETRY`): a person waiting at a prompt wants "cannot
  reach the store" in seconds, not after the half-minute a consumer spends riding out an outage;
* unless the user chose a log level (``--log-level``, ``DTIMEOUT_LOG_LEVEL``, config), library
  and provider warnings are not shown: a one-shot command's outcome is its one line (or its one
  error line), and advice such as "this SQS queue has no redrive policy" belongs to ``check``
  and to the consumer's log, not to every ``schedule``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy
import typer

from dtimeout.config import Settings, load_settings, misspelled_env_vars
from dtimeout.registry import Registry
from dtimeout.retries import RetryPolicy

if TYPE_CHECKING:
    from dtimeout.app import Timeouts


ONE_SHOT_RETRY = RetryPolicy(attempts=2, max_seconds=5)
"""The retry policy of one-shot commands: one retry, within five seconds."""


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
            for name, suggestion in misspelled_env_vars():
                warn(f"ignoring unknown environment variable {name} (did you mean {suggestion}?)")
        return self._settings

    @property
    def log_level_chosen(self) -> bool:
        """Did the user choose a log level (option, environment or config file)?"""
        return self.settings.source_of("log_level") != "default"

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
        self,
        transport: str | None = None,
        store: str | None = None,
        *,
        one_shot: bool = True,
        **options: Any,
    ) -> Timeouts:
        """A ``Timeouts`` on the configured providers (or the given URLs), sharing our plugins.

        ``one_shot`` (the default, for commands that do one thing and exit) gives the short
        retry policy and hides library warnings unless the user chose a log level; long-running
        commands pass ``one_shot=False`` and a ``retry=`` of their own. ``options`` go to
        ``Timeouts`` as they are and win over the settings.
        """
        from dtimeout.app import Timeouts

        settings = self.settings
        if one_shot and not self.log_level_chosen:
            logging.getLogger().setLevel(logging.ERROR)
        kwargs: dict[str, Any] = {
            "retention": settings.retention,
            "max_attempts": settings.max_attempts,
            "lease": settings.lease,
            "orphans": settings.orphans,
        }
        if one_shot:
            kwargs["retry"] = ONE_SHOT_RETRY
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


def warn(text: str) -> None:
    """A warning line on stderr, in the format of the error lines (``dtimeout: warning: …``)."""
    print(f"dtimeout: warning: {text}", file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    """Machine output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def echo(text: str = "") -> None:
    """Human output: a plain line on stdout (flushed, so piped output is live)."""
    print(text, flush=True)


def render_table(
    title: str, headers: list[str], rows: list[list[str]], *, whole: tuple[str, ...] = ()
) -> None:
    """A table: boxed with rich on a terminal, tab-separated lines (header first) when piped.

    Piped output stays one record per line and never wraps, so ``grep``/``cut`` and tests can
    read it; people at a terminal get the readable version. Columns named in ``whole`` are never
    wrapped or cut (a due time cut to ``2030-01-01T12:…`` is useless); the others give way.
    """
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title or None)
        for index, header in enumerate(headers):
            if header in whole:
                width = max([len(header), *(len(row[index]) for row in rows)])
                table.add_column(header, no_wrap=True, min_width=width)
            else:
                table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    echo("\t".join(headers))
    for row in rows:
        echo("\t".join(row))
