"""The ``dtimeout`` command line: a thin Typer app over the library.

:func:`make_app` builds the app from one module per command group, each exposing
``register(app)``, then lets plugins add theirs through the ``dtimeout_register_commands`` hook.
:func:`main` runs it with Click's standalone mode off so that every failure goes through
``dtimeout.cli.errors`` — one line on stderr, exit 0 / 1 / 2, no traceback.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Annotated

import pluggy
import typer

from dtimeout.cli import errors, help
from dtimeout.cli.context import CliState
from dtimeout.plugins import make_plugin_manager

log = logging.getLogger(__name__)

# Built-in command groups, in help order. ``bench`` is written by another team member and may
# not exist yet in a given checkout: a missing module is skipped, a broken one is not hidden.
COMMAND_MODULES: tuple[str, ...] = (
    "dtimeout.cli.demo",
    "dtimeout.cli.run",
    "dtimeout.cli.timeouts",
    "dtimeout.cli.providers",
)
OPTIONAL_COMMAND_MODULES: tuple[str, ...] = ("dtimeout.cli.bench",)

HELP = (
    "Durable, cancellable timeouts over the queue you already run.\n\n"
    "Providers come from --transport/--store, DTIMEOUT_TRANSPORT/DTIMEOUT_STORE, dtimeout.toml "
    "or \\[tool.dtimeout] in pyproject.toml, else the embedded SQLite file "
    "./.dtimeout/dtimeout.db."
)


def _version(value: bool) -> None:
    if value:
        from dtimeout import __version__

        print(f"dtimeout {__version__}")
        raise typer.Exit()


def make_app(plugin_manager: pluggy.PluginManager | None = None) -> typer.Typer:
    """The Typer app with the built-in commands and every plugin's commands."""
    pm = plugin_manager if plugin_manager is not None else make_plugin_manager()
    app = typer.Typer(
        name="dtimeout",
        cls=help.Group,
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        transport: Annotated[
            str | None,
            typer.Option(
                "--transport", metavar="URL", help="Transport URL (env DTIMEOUT_TRANSPORT)."
            ),
        ] = None,
        store: Annotated[
            str | None,
            typer.Option("--store", metavar="URL", help="Store URL (env DTIMEOUT_STORE)."),
        ] = None,
        log_level: Annotated[
            str | None,
            typer.Option(
                "--log-level",
                metavar="LEVEL",
                help="DEBUG, INFO, WARNING (default) or ERROR (env DTIMEOUT_LOG_LEVEL).",
            ),
        ] = None,
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=_version, is_eager=True, help="Show the version and exit."
            ),
        ] = False,
    ) -> None:
        ctx.obj = CliState(pm, transport=transport, store=store, log_level=log_level)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    for name in OPTIONAL_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app)
    _plugin_commands(pm, app)
    help.apply(app)
    return app


def _plugin_commands(pm: pluggy.PluginManager, app: typer.Typer) -> None:
    """Let each plugin add commands; one that raises is logged and skipped, never fatal."""
    for impl in pm.hook.dtimeout_register_commands.get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            impl.function(**{name: app for name in impl.argnames})
        except Exception as exc:
            log.warning(
                "plugin %r could not add its commands: %s",
                impl.plugin_name,
                errors.one_line(f"{type(exc).__name__}: {exc}"),
            )


class _LogFormat(logging.Formatter):
    """``dtimeout: warning: …`` — log lines in the shape of the CLI's own error lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{errors.PROG}: {record.levelname.lower()}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    root = logging.getLogger()
    if not root.handlers:  # what logging.basicConfig() checks; an embedding app keeps its own
        handler = logging.StreamHandler()
        handler.setFormatter(_LogFormat("%(message)s"))
        root.addHandler(handler)
    level = root.level
    try:
        command = typer.main.get_command(make_app())
        result = command.main(
            args=list(argv) if argv is not None else None,
            prog_name=errors.PROG,
            standalone_mode=False,
        )
    except typer.Exit as exc:
        return exc.exit_code
    except (Exception, KeyboardInterrupt, typer.Abort) as exc:
        return errors.report(exc)
    finally:
        root.setLevel(level)  # --log-level is for this run (main() also runs in-process)
    return result if isinstance(result, int) else errors.EXIT_OK


__all__ = ["main", "make_app"]
