"""Typed settings from four layers: CLI option > environment > config file > default.

The layers, lowest first:

1. the defaults below (transport and store both ``sqlite:///./.dtimeout/dtimeout.db``);
2. ``[tool.dtimeout]`` in ``./pyproject.toml``;
3. ``./dtimeout.toml`` (top-level keys), or the file named by ``DTIMEOUT_CONFIG``;
4. environment variables ``DTIMEOUT_<KEY>`` (``DTIMEOUT_TRANSPORT``, ``DTIMEOUT_RETENTION``…);
5. keyword arguments of :func:`load_settings` (the CLI passes its options; ``None`` = not given).

Every value is parsed and checked here, once, so a typo is caught before anything connects:
``ConfigurationError`` names the source (``DTIMEOUT_LEASE``, ``dtimeout.toml``, ``--lease``) and
the key. :attr:`Settings.sources` remembers where each value came from, for ``dtimeout check``.

A misspelled variable (``DTIMEOUT_TRANSPRT``) would otherwise be silently ignored and the default
used; :func:`misspelled_env_vars` finds the ones that are close to a name we know, so the CLI
can warn with a did-you-mean. Unknown names close to nothing are left alone: providers from
other distributions may read ``DTIMEOUT_<THEIR_OWN>`` variables.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from dtimeout.durations import parse_duration
from dtimeout.errors import ConfigurationError, ValidationError
from dtimeout.model import OrphanPolicy

DEFAULT_URL = "sqlite:///./.dtimeout/dtimeout.db"
ENV_PREFIX = "DTIMEOUT_"
CONFIG_FILE = "dtimeout.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# ``DTIMEOUT_*`` variables that are not settings but are read by name somewhere: the CLI, the
# plugin manager, the built-in and first-party providers, the test suite's live runs.
OTHER_ENV_VARS: tuple[str, ...] = (
    "DTIMEOUT_CONFIG",
    "DTIMEOUT_DEBUG",
    "DTIMEOUT_DISABLE_PLUGINS",
    "DTIMEOUT_REDIS_PASSWORD",
    "DTIMEOUT_AZURE_CONNECTION_STRING",
    "DTIMEOUT_AZURE_QUEUE",
    "DTIMEOUT_AZURE_LOCK_SECONDS",
)


@dataclass(frozen=True)
class Settings:
    """Everything a ``Timeouts`` or a CLI command needs to know, already validated."""

    transport: str = DEFAULT_URL
    store: str = DEFAULT_URL
    app: str | None = None  # ``module:attr`` of a Timeouts object, for ``run consume``
    retention: timedelta = timedelta(days=7)
    max_attempts: int = 5
    lease: timedelta = timedelta(seconds=30)
    orphans: OrphanPolicy = OrphanPolicy.FIRE
    concurrency: int = 1
    batch_size: int | None = None  # None: the transport's largest receive batch
    wait: timedelta = timedelta(seconds=1)  # how long one receive waits when nothing is due
    log_level: str = "WARNING"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def source_of(self, name: str) -> str:
        """Where ``name`` came from: ``default``, a file, ``DTIMEOUT_…`` or ``--option``."""
        return self.sources.get(name, "default")


def _url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ValidationError("expected a provider URL like sqlite:///path/to.db or redis://host")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError("expected a string")
    return value.strip()


def _app(value: Any) -> str | None:
    text = _optional_text(value)
    if text is not None and (":" not in text or text.startswith(":") or text.endswith(":")):
        raise ValidationError("expected module:attribute, e.g. myapp.timeouts:timeouts")
    return text


def _duration(value: Any) -> timedelta:
    return parse_duration(value)


def _positive_duration(value: Any) -> timedelta:
    parsed = parse_duration(value)
    if parsed <= timedelta(0):
        raise ValidationError("must be longer than zero")
    return parsed


def _int_at_least(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("expected an integer")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValidationError("expected an integer") from None
        if not isinstance(value, int):
            raise ValidationError("expected an integer")
        if value < minimum:
            raise ValidationError(f"must be at least {minimum}")
        return value

    return parse


def _optional_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return _int_at_least(1)(value)


def _orphans(value: Any) -> OrphanPolicy:
    try:
        return OrphanPolicy(str(value).strip().lower())
    except ValueError:
        choices = " or ".join(p.value for p in OrphanPolicy)
        raise ValidationError(f"expected {choices}") from None


def _log_level(value: Any) -> str:
    text = str(value).strip().upper()
    if text not in LOG_LEVELS:
        raise ValidationError(f"expected one of {', '.join(LOG_LEVELS)}")
    return text


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "transport": _url,
    "store": _url,
    "app": _app,
    "retention": _positive_duration,
    "max_attempts": _int_at_least(1),
    "lease": _positive_duration,
    "orphans": _orphans,
    "concurrency": _int_at_least(1),
    "batch_size": _optional_int,
    "wait": _duration,
    "log_level": _log_level,
}

KEYS: tuple[str, ...] = tuple(f.name for f in fields(Settings) if f.name != "sources")
assert set(KEYS) == set(_PARSERS), "every setting needs a parser"


def env_var(key: str) -> str:
    """The environment variable for a setting: ``max_attempts`` → ``DTIMEOUT_MAX_ATTEMPTS``."""
    return ENV_PREFIX + key.upper()


def known_env_vars() -> tuple[str, ...]:
    """Every ``DTIMEOUT_*`` variable dtimeout reads: one per setting, plus the others."""
    return tuple(env_var(k) for k in KEYS) + OTHER_ENV_VARS


def misspelled_env_vars(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(name, suggestion)`` for each set ``DTIMEOUT_*`` variable we do not know that is close
    to one we do (``DTIMEOUT_TRANSPRT`` → ``DTIMEOUT_TRANSPORT``), sorted by name."""
    env = os.environ if environ is None else environ
    known = known_env_vars()
    found = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            found.append((name, close[0]))
    return found


def load_settings(
    *,
    cwd: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    **cli_overrides: Any,
) -> Settings:
    """Merge the layers and validate every value.

    ``cli_overrides`` are the CLI's options by setting name (``transport=``, ``lease=``…); a
    ``None`` value means "not given on the command line". ``cwd`` and ``environ`` default to
    the process's; tests pass their own.
    """
    unknown = sorted(set(cli_overrides) - set(KEYS))
    if unknown:
        raise TypeError(f"load_settings() got unknown setting(s): {', '.join(unknown)}")
    env = os.environ if environ is None else environ
    base = Path.cwd() if cwd is None else Path(cwd)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(layer: Mapping[str, Any], describe: Callable[[str], str]) -> None:
        for key, raw in layer.items():
            source = describe(key)
            try:
                values[key] = _PARSERS[key](raw)
            except ValidationError as exc:
                raise ConfigurationError(f"{source}: invalid value {raw!r}: {exc}") from None
            sources[key] = source

    pyproject = base / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("dtimeout", {})
        name = f"{pyproject} [tool.dtimeout]"
        apply(_normalise(table, name), lambda k: f"{name} key {k!r}")

    explicit = env.get(ENV_PREFIX + "CONFIG")
    config_file = Path(explicit) if explicit else base / CONFIG_FILE
    if explicit and not config_file.is_file():
        raise ConfigurationError(f"DTIMEOUT_CONFIG: no such file {str(config_file)!r}")
    if config_file.is_file():
        name = str(config_file)
        apply(_normalise(_read_toml(config_file), name), lambda k: f"{name} key {k!r}")

    apply({k: env[env_var(k)] for k in KEYS if env_var(k) in env}, env_var)
    apply(
        {k: v for k, v in cli_overrides.items() if v is not None},
        lambda k: "--" + k.replace("_", "-"),
    )
    return replace(Settings(**values), sources=dict(sources))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not valid TOML/UTF-8: byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start} is not UTF-8 (TOML files are UTF-8)"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot be read: {exc.strerror}") from None


def _normalise(table: Any, source: str) -> dict[str, Any]:
    """Keys with dashes or underscores; unknown keys are refused with a did-you-mean."""
    if not isinstance(table, dict):
        raise ConfigurationError(f"{source}: expected a table of settings")
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = str(raw_key).replace("-", "_").lower()
        if key not in _PARSERS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(f"{source}: unknown key {raw_key!r}{hint}")
        out[key] = value
    return out


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (the CLI's job; the library only creates loggers)."""
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
