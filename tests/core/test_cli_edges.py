"""The CLI at its edges: what a newcomer's review found, each pinned by a test.

Conflicting plugins scoped to their scheme, the short retry policy of one-shot commands, quiet
provider warnings, ``--orphans``, configuration files that are not UTF-8, missing SQLite
directories, repeated ``--state``, help metavars, ``--payload @file``, misspelled environment
variables, ``DTIMEOUT_APP`` named in its own errors, bench durations and whole due times.
Fixtures (a clean directory per test, the in-process ``cli`` runner) come from ``test_cli``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import Result, Run, assert_usage_error, clean_directory, cli

from dtimeout import ProviderInfo, hookimpl
from dtimeout.clock import Clock
from dtimeout.errors import TransientStoreError
from dtimeout.plugins import DtimeoutPluginManager, make_plugin_manager, reset_failure_reports
from dtimeout.providers import memory
from dtimeout.testing.servers import free_port

__all__ = ["clean_directory", "cli"]  # fixtures used here, defined in test_cli

MEMORY: tuple[str, ...] = ()  # set per test by the autouse fixture below


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Named memory providers live as long as the process: give each test its own."""
    url = f"memory://edges-{uuid.uuid4().hex}"
    monkeypatch.setattr(sys.modules[__name__], "MEMORY", ("--transport", url, "--store", url))


def assert_one_error_line(result: Result, code: int, *fragments: str) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("dtimeout: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def extra_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., DtimeoutPluginManager]:
    """``extra_plugins(name=obj, ...)``: the CLI's plugin manager gets these inline plugins too."""
    import dtimeout.cli as cli_module

    def install(**plugins: object) -> DtimeoutPluginManager:
        real = make_plugin_manager

        def build(**kwargs: Any) -> DtimeoutPluginManager:
            pm = real(**kwargs)
            for name, plugin in plugins.items():
                pm.register(plugin, name=name)
            return pm

        monkeypatch.setattr(cli_module, "make_plugin_manager", build)
        return build()

    return install


# --------------------------------------------------------------------------------------------
# 3. two plugins claiming one scheme: scoped to that scheme


class _Claims:
    """An inline third-party plugin claiming ``scheme`` in both roles (served by memory)."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    @hookimpl
    def dtimeout_register_transports(self, register: Callable[[ProviderInfo], None]) -> None:
        register(ProviderInfo(self.scheme, f"{self.scheme}-clone", memory.open_transport))

    @hookimpl
    def dtimeout_register_stores(self, register: Callable[[ProviderInfo], None]) -> None:
        register(ProviderInfo(self.scheme, f"{self.scheme}-clone", memory.open_store))


def test_a_scheme_conflict_breaks_only_that_scheme(cli: Run, extra_plugins: Any) -> None:
    extra_plugins(impostor=_Claims("redis"))
    listed = cli("providers", "--json")
    assert listed.code == 0, listed.err
    schemes = {(p["scheme"], p["role"]) for p in listed.json["providers"]}
    assert ("sqlite", "store") in schemes and ("redis", "store") not in schemes
    failure = next(f for f in listed.json["failures"] if f["name"] == "impostor")
    assert "'redis'" in failure["error"] and "dtimeout.providers.redis.plugin" in failure["error"]

    text = cli("providers")
    assert text.code == 0 and "impostor" in text.out

    assert cli("schedule", "k", "a", "--in", "1h").code == 0  # the default sqlite still works
    line = assert_one_error_line(
        cli("--store", "redis://127.0.0.1:1/0", "status", "k", "a"), 2, "two plugins claim"
    )
    assert "plugin 'dtimeout.providers.redis.plugin' (from dtimeout)" in line
    assert "plugin 'impostor'" in line
    assert "uninstall one of them" in line and "DTIMEOUT_DISABLE_PLUGINS=impostor" in line


def test_disabling_a_plugin_resolves_the_conflict(
    cli: Run, extra_plugins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The impostor claims the scheme of a built-in; blocking the built-in leaves the impostor.
    extra_plugins(impostor=_Claims("memory"))
    assert_one_error_line(cli(*MEMORY, "list"), 2, "two plugins claim", "'memory'")
    monkeypatch.setenv("DTIMEOUT_DISABLE_PLUGINS", "dtimeout.providers.memory")
    listed = cli("providers", "--json")
    assert listed.json["failures"] == []
    memory_rows = [p for p in listed.json["providers"] if p["scheme"] == "memory"]
    assert {p["plugin"] for p in memory_rows} == {"impostor"}
    assert cli(*MEMORY, "list").code == 0


def test_timeouts_on_the_default_works_beside_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtimeout import Timeouts

    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(_Claims("redis"), name="impostor")
    reset_failure_reports()
    with Timeouts(plugin_manager=pm) as timeouts:  # sqlite:///./.dtimeout/dtimeout.db
        assert timeouts.schedule("k", "a", after=60).generation == 1


# --------------------------------------------------------------------------------------------
# 4. one-shot commands: a short retry policy; long-running ones keep the full one


class _Flaky:
    """A store whose every call fails transiently, counting the attempts."""

    calls = 0

    @hookimpl
    def dtimeout_register_stores(self, register: Callable[[ProviderInfo], None]) -> None:
        def factory(url: str, clock: Clock) -> Any:
            store = memory.open_store("memory://", clock)

            def down(*args: object, **kwargs: object) -> Any:
                _Flaky.calls += 1
                raise TransientStoreError("flaky store: connection refused")

            for name in ("get", "schedule", "cancel", "list", "claim"):
                setattr(store, name, down)
            return store

        register(ProviderInfo("flaky", "flaky", factory))


def test_one_shot_commands_retry_once_and_fail_with_one_line(cli: Run, extra_plugins: Any) -> None:
    extra_plugins(flaky=_Flaky())
    _Flaky.calls = 0
    result = cli("--transport", "memory://", "--store", "flaky://", "status", "k", "a")
    assert_one_error_line(result, 1, "flaky store: connection refused")
    assert _Flaky.calls == 2  # the first try and one retry


def test_run_produce_keeps_the_full_retry_policy(cli: Run, extra_plugins: Any) -> None:
    extra_plugins(flaky=_Flaky())
    _Flaky.calls = 0
    result = cli(
        "--transport", "memory://", "--store", "flaky://", "run", "produce", "--count", "1"
    )
    assert result.code == 1
    assert _Flaky.calls == 5  # RetryPolicy's default attempts: it rides out outages


def test_unreachable_redis_in_a_one_shot_command(cli: Run) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0?retries=0&connect_timeout=0.5"
    line = assert_one_error_line(cli("--store", url, "status", "a", "b"), 1, "user:****@127.0.0.1")
    assert "hunter2" not in line


# --------------------------------------------------------------------------------------------
# 8. provider warnings: shown at the level the user chose, not by default in one-shot commands


class _Noisy:
    """A transport that warns when opened, like SQS on a queue without a redrive policy."""

    @hookimpl
    def dtimeout_register_transports(self, register: Callable[[ProviderInfo], None]) -> None:
        def factory(url: str, clock: Clock) -> Any:
            logging.getLogger("dtimeout_noisy").warning("queue has no redrive policy")
            return memory.open_transport("memory://noisy", clock)

        register(ProviderInfo("noisy", "noisy", factory))


@pytest.fixture
def stderr_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Route the root logger's output to a buffer, as the CLI's own handler does to stderr."""
    monkeypatch.delenv("DTIMEOUT_LOG_LEVEL")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


def test_one_shot_commands_show_no_provider_warnings_by_default(
    cli: Run, extra_plugins: Any, stderr_logging: io.StringIO
) -> None:
    extra_plugins(noisy=_Noisy())
    noisy = ("--transport", "noisy://", "--store", "memory://noisy")
    assert cli(*noisy, "schedule", "k", "a", "--in", "1h").code == 0
    assert cli(*noisy, "cancel", "k", "a").code == 0
    assert "redrive" not in stderr_logging.getvalue()
    failed = cli(*noisy, "schedule", "k", "b", "--in", "-1s")
    assert_one_error_line(failed, 2, "negative")
    assert "redrive" not in stderr_logging.getvalue()

    chosen = cli(*noisy, "--log-level", "WARNING", "schedule", "k", "c", "--in", "1h")
    assert chosen.code == 0
    assert "queue has no redrive policy" in stderr_logging.getvalue()


def test_the_cli_formats_log_lines_like_its_error_lines() -> None:
    from dtimeout.cli import _LogFormat

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)
    assert _LogFormat("%(message)s").format(record) == "dtimeout: warning: careful"


# --------------------------------------------------------------------------------------------
# 5. --orphans


def _orphan_app(directory: Path) -> None:
    url = f"memory://orphans-{uuid.uuid4().hex}"
    (directory / "orphanapp.py").write_text(
        textwrap.dedent(
            f"""
            from dtimeout import Timeouts
            from dtimeout.interfaces import OutgoingMessage
            from dtimeout.model import TimeoutMessage

            timeouts = Timeouts({url!r}, {url!r})

            @timeouts.handler("payment")
            def expired(t):
                with open("calls.txt", "a") as fh:
                    fh.write(t.key + "\\n")

            # A message whose record is gone (expired, store wiped): an orphan.
            body = TimeoutMessage("payment", "lost", 1, 0).encode()
            timeouts.transport.send([OutgoingMessage("orphan-1", body, 0)])
            """
        ),
        encoding="utf-8",
    )


@pytest.mark.parametrize(("policy", "fired"), [("drop", 0), ("DROP", 0), ("fire", 1)])
def test_run_consume_orphans_option(cli: Run, tmp_path: Path, policy: str, fired: int) -> None:
    _orphan_app(tmp_path)
    sys.modules.pop("orphanapp", None)
    try:
        result = cli(
            "run", "consume", "--app", "orphanapp:timeouts", "--orphans", policy, "--burst",
            "--idle", "300ms", "--json",
        )  # fmt: skip
    finally:
        sys.modules.pop("orphanapp", None)
    assert result.code == 0, result.err
    assert result.json["fired"] == fired
    assert (tmp_path / "calls.txt").exists() is bool(fired)


def test_run_consume_orphans_refuses_other_values(cli: Run) -> None:
    assert_usage_error(cli("run", "consume", "--app", "m:t", "--orphans", "keep"), "--orphans")


# --------------------------------------------------------------------------------------------
# 6. configuration files that are not UTF-8; 7. missing SQLite directories


def test_a_config_file_that_is_not_utf8_is_one_line_exit_2(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "dtimeout.toml").write_bytes(b'transport = "caf\xe9"\n')
    assert_one_error_line(cli("list"), 2, "dtimeout.toml", "not valid TOML/UTF-8")


def test_sqlite_creates_only_the_files_own_directory(cli: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent_dir" / "x"
    url = f"sqlite:///{missing}/y.db"
    line = assert_one_error_line(cli("--transport", url, "--store", url, "list"), 2)
    assert str(missing) in line and "does not exist" in line
    assert not (tmp_path / "nonexistent_dir").exists()

    one_level = "sqlite:///./data/jobs.db"
    assert cli("--transport", one_level, "--store", one_level, "list").code == 0
    assert (tmp_path / "data" / "jobs.db").is_file()


# --------------------------------------------------------------------------------------------
# 9. smaller things


def test_list_accepts_several_states(cli: Run) -> None:
    for key in ("a", "b", "c"):
        assert cli(*MEMORY, "schedule", "k", key, "--in", f"{ord(key)}m").code == 0
    assert cli(*MEMORY, "cancel", "k", "b").code == 0
    both = cli(*MEMORY, "list", "--state", "pending", "--state", "cancelled", "--json")
    assert [(r["key"], r["state"]) for r in both.json] == [
        ("a", "pending"),
        ("b", "cancelled"),
        ("c", "pending"),
    ]
    one = cli(*MEMORY, "list", "--state", "cancelled", "--json")
    assert [r["key"] for r in one.json] == ["b"]
    limited = cli(*MEMORY, "list", "--state", "pending", "--state", "cancelled", "--limit", "2")
    assert [line.split("\t")[1] for line in limited.out.splitlines()[1:]] == ["a", "b"]


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["schedule"], "Usage: dtimeout schedule [OPTIONS] KIND KEY"),
        (["cancel"], "Usage: dtimeout cancel [OPTIONS] KIND KEY"),
        (["status"], "Usage: dtimeout status [OPTIONS] KIND KEY"),
        (["run"], "Usage: dtimeout run [OPTIONS] COMMAND [ARGS]..."),
        ([], "Usage: dtimeout [OPTIONS] COMMAND [ARGS]..."),
    ],
)
def test_help_shows_metavars_and_no_value_on_flags(
    cli: Run, monkeypatch: pytest.MonkeyPatch, args: list[str], usage: str
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    result = cli(*args, "--help")
    assert result.code == 0
    assert usage in result.out
    assert "{" not in result.out and "<bool>" not in result.out, result.out


def test_every_help_page_is_free_of_bool_labels(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    pages = [[], ["run"], ["run", "consume"], ["run", "produce"], ["demo"], ["list"]]
    pages += [["providers"], ["check"], ["bench"], ["schedule"]]
    for page in pages:
        out = cli(*page, "--help").out
        assert "<bool>" not in out and "{" not in out, (page, out)
    providers_help = cli("providers", "--help").out
    listed = cli("providers").out.splitlines()[0].split("\t")
    for column in ("scheme", "role", "name", "plugin", "distribution", "version"):
        assert column in providers_help and column in listed


def test_bench_takes_durations(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from dtimeout import bench as bench_module

    seen: dict[str, Any] = {}

    def fake_run_bench(options: Any, progress: Any = None) -> Any:
        seen.update(delay=options.delay, duration=options.duration)
        raise SystemExit(0)

    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    with pytest.raises(SystemExit):
        cli(*MEMORY, "bench", "--delay", "2s", "--duration", "1m30s")
    assert seen == {"delay": 2.0, "duration": 90.0}
    with pytest.raises(SystemExit):
        cli(*MEMORY, "bench", "--delay", "1.5")  # a bare number is still seconds
    assert seen["delay"] == 1.5
    assert_usage_error(cli(*MEMORY, "bench", "--delay", "soon"), "'--delay'", "not a duration")


def test_a_bad_dtimeout_app_names_the_variable(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTIMEOUT_APP", "nosuchmodule_xyz:timeouts")
    line = assert_one_error_line(cli("run", "consume", "--once"), 2, "no module named")
    assert "DTIMEOUT_APP 'nosuchmodule_xyz:timeouts'" in line and "--app" not in line
    line = assert_one_error_line(cli("run", "consume", "--app", "nosuchmodule_xyz:t"), 2)
    assert line.startswith("dtimeout: error: --app 'nosuchmodule_xyz:t'")


def test_misspelled_environment_variables_get_a_warning(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTIMEOUT_TRANSPRT", "memory://typo")
    monkeypatch.setenv("DTIMEOUT_RABBITMQ_URL", "amqp://elsewhere")  # another provider's own
    result = cli("list")
    assert result.code == 0  # a warning, not an error: the default was used
    assert result.err.strip().splitlines() == [
        "dtimeout: warning: ignoring unknown environment variable DTIMEOUT_TRANSPRT "
        "(did you mean DTIMEOUT_TRANSPORT?)"
    ]


def test_payload_from_a_file_and_from_stdin(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "p.json").write_text('{"order": 42, "lines": [1, 2]}', encoding="utf-8")
    assert cli(*MEMORY, "schedule", "k", "file", "--in", "1h", "--payload", "@p.json").code == 0
    assert cli(*MEMORY, "status", "k", "file", "--json").json["payload"] == {
        "order": 42,
        "lines": [1, 2],
    }
    monkeypatch.setattr(sys, "stdin", io.StringIO('["from", "stdin"]'))
    assert cli(*MEMORY, "schedule", "k", "stdin", "--in", "1h", "--payload", "@-").code == 0
    assert cli(*MEMORY, "status", "k", "stdin", "--json").json["payload"] == ["from", "stdin"]
    assert_usage_error(
        cli(*MEMORY, "schedule", "k", "x", "--in", "1h", "--payload", "@missing.json"),
        "'--payload'",
        "cannot read 'missing.json'",
    )


def test_a_payload_over_the_transport_limit_is_refused(cli: Run, tmp_path: Path) -> None:
    big = json.dumps({"blob": "x" * (1024 * 1024)})  # the memory transport takes 1 MiB
    (tmp_path / "big.json").write_text(big, encoding="utf-8")
    result = cli(*MEMORY, "schedule", "k", "big", "--in", "1h", "--payload", "@big.json")
    assert_one_error_line(result, 2, "k:big")
    assert cli(*MEMORY, "status", "k", "big").code == 1  # nothing was written


def test_the_boxed_table_keeps_due_times_whole(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "order-with-a-rather-long-identifier-0123456789"
    assert (
        cli(*MEMORY, "schedule", "payment-reminder", key, "--at", "2030-01-01T12:00:00Z").code == 0
    )
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    result = cli(*MEMORY, "list")
    assert result.code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.out)  # rich may colour the cells
    assert "2030-01-01T12:00:00.000+00:00" in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
