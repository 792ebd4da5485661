"""Help pages that read like a Unix manual: ``Usage: dtimeout schedule [OPTIONS] KIND KEY``.

The Typer release we build on labels every option with its Python type, flags included
(``--version <bool>`` reads as if it took a value), and writes required arguments as
``{kind} {key}``. :class:`Command` and :class:`Group` fix both in one place: flags show no value
label, arguments show their metavar (or their name in capitals), optional ones in brackets.
:func:`apply` gives every command of an app these classes, including the commands plugins add,
so the whole ``--help`` tree looks the same.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def usage_name(argument: TyperArgument) -> str:
    """``KIND``, ``[KIND]`` when optional, ``KIND...`` when it takes several values."""
    name = argument.metavar or (argument.name or "ARG").upper()
    if argument.nargs != 1:
        name += "..."
    return name if argument.required else f"[{name}]"


class _ManualStyle:
    """Mixin for a Typer command class (see the module docstring)."""

    options_metavar: str | None

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""  # no value label: a flag takes no value
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Command(_ManualStyle, TyperCommand):
    """A command whose help shows ``KIND KEY`` and flags without a value label."""


class Group(_ManualStyle, TyperGroup):
    """A command group with the same help style."""

    subcommand_metavar: str

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]


def apply(app: typer.Typer) -> None:
    """Give every command of ``app`` (and of its sub-apps) the :class:`Command` class, unless
    it asked for a class of its own (Typer records its default class when none was given)."""
    for command in app.registered_commands:
        if command.cls is None or command.cls is TyperCommand:
            command.cls = Command
    for group in app.registered_groups:
        if group.typer_instance is not None:
            apply(group.typer_instance)
