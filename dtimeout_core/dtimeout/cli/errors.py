"""The one place where failures become an exit code and one line on stderr.

Exit codes (DESIGN §6): 0 ok, 1 runtime failure, 2 bad usage or configuration; 130/143 when a
long-running command was stopped by SIGINT/SIGTERM in a way that is not its normal end (see
``dtimeout.cli.signals``). Nothing prints a traceback unless ``DTIMEOUT_DEBUG=1`` is set: a user
who typed a bad duration needs the line that names it, not forty lines of frames. Commands
raise; they never call ``sys.exit`` with a message of their own.

Every failure line has one shape, ``dtimeout: error: <what is wrong>`` — usage errors from
Typer/Click included (they end with the ``--help`` to read), so scripts and people look for one
prefix. Warnings use ``dtimeout: warning: …``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, TextIO

import typer

from dtimeout.errors import ConfigurationError, DtimeoutError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # SIGINT; SIGTERM gives 143 (128 + the signal number)

PROG = "dtimeout"


class CommandFailed(DtimeoutError):
    """Raised by a command that ran but did not succeed (``check`` found a provider down)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """Collapse whitespace so a multi-line SDK message stays one line."""
    return " ".join(str(text).split())


def _usage_context(exc: BaseException) -> Any:
    """The Typer context of a usage error (None for other errors)."""
    if isinstance(exc, typer.TyperException) and exc.exit_code == EXIT_USAGE:
        return getattr(exc, "ctx", None)
    return None


def is_help_request(exc: BaseException) -> bool:
    """A group run without a sub-command: Typer raises a usage error carrying the help text."""
    # Typer does not export the class; its name is the stable part of that contract.
    return _usage_context(exc) is not None and type(exc).__name__ == "NoArgsIsHelpError"


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that reached the top of the CLI."""
    if isinstance(exc, CommandFailed):
        return exc.code
    if isinstance(exc, typer.TyperException):
        return exc.exit_code
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def message_for(exc: BaseException) -> str:
    """The one line shown for ``exc``."""
    prefix = f"{PROG}: error:"
    if isinstance(exc, typer.TyperException):
        ctx = _usage_context(exc)
        if ctx is not None:
            path = ctx.command_path
            return f"{prefix} {one_line(exc.format_message())} (see '{path} --help')"
        return f"{prefix} {one_line(exc.format_message())}"
    if isinstance(exc, KeyboardInterrupt):
        return f"{prefix} interrupted"
    if isinstance(exc, typer.Abort):
        return f"{prefix} aborted"
    if isinstance(exc, DtimeoutError):
        return f"{prefix} {one_line(str(exc))}"
    text = one_line(str(exc))
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{prefix} internal error: {detail} (set DTIMEOUT_DEBUG=1 for the traceback)"


def report(exc: BaseException, stream: TextIO | None = None) -> int:
    """Print the line for ``exc`` (and the traceback when debugging); return the exit code.

    A bare group (``dtimeout run``) prints its help on stdout instead, with Click's exit 2.
    """
    if is_help_request(exc):
        text = _usage_context(exc).get_help()  # Typer's rich help prints itself, returns ""
        if text:
            print(text, flush=True)
        return EXIT_USAGE
    out = stream if stream is not None else sys.stderr
    if os.environ.get("DTIMEOUT_DEBUG") and _usage_context(exc) is None:
        traceback.print_exception(exc, file=out)
    print(message_for(exc), file=out, flush=True)
    return exit_code_for(exc)
