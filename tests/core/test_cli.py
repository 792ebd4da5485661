"""The CLI in-process: each command, the exit codes, and one line per error, no traceback.

Every test runs in its own empty directory with no ``DTIMEOUT_*`` variables, so the default
``sqlite:///./.dtimeout/dtimeout.db`` is a fresh file per test.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtimeout
from dtimeout import hookimpl
from dtimeout.cli import main, make_app
from dtimeout.plugins import make_plugin_manager
from dtimeout.testing.servers import free_port


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture(autouse=True)
def clean_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("DTIMEOUT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DTIMEOUT_LOG_LEVEL", "ERROR")
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr naming the problem, no traceback."""
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("dtimeout: error: "), lines[0]
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0]


def test_schedule_status_cancel_list_on_the_default_sqlite_file(cli: Run, tmp_path: Path) -> None:
    scheduled = cli("schedule", "payment", "o1", "--in", "15m", "--payload", '{"order": 1}')
    assert scheduled.code == 0, scheduled.err
    assert "scheduled payment:o1 pending (generation 1" in scheduled.out
    assert (tmp_path / ".dtimeout" / "dtimeout.db").exists()

    status = cli("status", "payment", "o1", "--json")
    assert status.code == 0
    assert status.json == {
        "kind": "payment",
        "key": "o1",
        "state": "pending",
        "generation": 1,
        "due_at": status.json["due_at"],
        "attempts": 0,
        "reason": None,
        "payload": {"order": 1},
    }

    assert cli("cancel", "payment", "o1").out.strip() == "payment:o1 cancelled"
    again = cli("cancel", "payment", "o1", "--json")
    assert again.code == 0 and again.json == {
        "kind": "payment",
        "key": "o1",
        "result": "already_cancelled",
    }
    assert cli("cancel", "payment", "never").out.strip() == "payment:never not_found"

    assert cli("schedule", "payment", "o2", "--at", "2030-01-01T12:00:00Z").code == 0
    listed = cli("list", "--json")
    assert [(r["key"], r["state"]) for r in listed.json] == [
        ("o1", "cancelled"),
        ("o2", "pending"),
    ]
    pending = cli("list", "--state", "PENDING")
    assert pending.out.splitlines()[0].split("\t")[:3] == ["kind", "key", "state"]
    assert [line.split("\t")[1] for line in pending.out.splitlines()[1:]] == ["o2"]


def test_status_of_an_unknown_timeout_exits_1(cli: Run) -> None:
    result = cli("status", "payment", "nope")
    assert result.code == 1
    assert result.err.strip() == (
        "dtimeout: error: no timeout payment:nope (never scheduled, or its record expired)"
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--transport", "sqllite:///x.db", "schedule", "k", "a", "--in", "1s"],
            ["unknown transport scheme 'sqllite'", "did you mean 'sqlite'?", "memory"],
        ),
        (["schedule", "k", "a", "--in", "5x"], ["'--in'", "'5x' is not a duration"]),
        (["schedule", "k", "a", "--in", "-5s"], ["'--in'", "negative"]),
        (
            ["schedule", "k", "a", "--at", "2030-01-01T12:00:00"],
            ["'--at'", "has no timezone", "2030-01-01T12:00:00Z"],
        ),
        (["schedule", "k", "a", "--at", "tomorrow"], ["'--at'", "not an ISO 8601"]),
        (["schedule", "k", "a", "--in", "1s", "--payload", "{bad"], ["'--payload'", "JSON"]),
        (["schedule", "k", "a"], ["'--in' / '--at'", "exactly one"]),
        (["schedule", "k", "a", "--in", "1s", "--at", "2030-01-01T00:00Z"], ["exactly one"]),
        (["run", "consume"], ["'--app'", "missing"]),
        (["list", "--state", "sleeping"], ["'--state'", "pending, firing"]),
        (["list", "--limit", "0"], ["--limit"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
        (["--store", "localhost", "list"], ["--store", "expected a provider URL"]),
        (["--transport", "memory://", "run", "consume", "--app", "m:t"], ["owns its providers"]),
    ],
)
def test_bad_input_exits_2_with_one_line(cli: Run, args: list[str], fragments: list[str]) -> None:
    assert_usage_error(cli(*args), *fragments)


def test_bad_environment_value_exits_2_naming_the_variable(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTIMEOUT_RETENTION", "forever")
    assert_usage_error(cli("list"), "DTIMEOUT_RETENTION", "'forever'")


def test_configuration_file_is_used(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "dtimeout.toml").write_text(
        'transport = "memory://cfg"\nstore = "memory://cfg"\n', encoding="utf-8"
    )
    assert cli("schedule", "k", "from-file", "--in", "1h").code == 0
    assert not (tmp_path / ".dtimeout").exists()
    assert cli("status", "k", "from-file").code == 0


def test_providers_lists_builtins_with_distribution_and_version(cli: Run) -> None:
    result = cli("providers", "--json")
    assert result.code == 0
    providers = result.json["providers"]
    found = {(p["scheme"], p["role"]): p for p in providers}
    for scheme in ("memory", "sqlite"):
        for role in ("transport", "store"):
            entry = found[(scheme, role)]
            assert entry["distribution"] == "dtimeout"
            assert entry["version"] == dtimeout.__version__
    text = cli("providers").out.splitlines()
    header = ["scheme", "role", "name", "plugin", "distribution", "version", "description"]
    assert text[0].split("\t") == header
    row = f"sqlite\tstore\tsqlite\tdtimeout.providers.sqlite\tdtimeout\t{dtimeout.__version__}\t"
    assert any(line.startswith(row) for line in text)


def test_check_reports_reachable_providers(cli: Run) -> None:
    result = cli("check")
    assert result.code == 0, result.err
    assert "transport sqlite:///./.dtimeout/dtimeout.db  [default]  ok" in result.out


def test_check_exits_1_when_unreachable_and_masks_the_password(cli: Run) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0?retries=0&connect_timeout=0.5"
    result = cli("--store", url, "check", "--json")
    assert result.code == 1
    rows = result.json
    assert [r["ok"] for r in rows] == [True, False]
    assert "hunter2" not in result.out + result.err
    assert ":****@127.0.0.1" in result.out
    assert result.err.strip() == "dtimeout: error: cannot reach the store"


def test_check_asks_both_and_keeps_their_order(cli: Run) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0?retries=0&connect_timeout=0.5"
    result = cli("--transport", down, "--store", down + "&prefix=other", "check", "--json")
    assert result.code == 1
    assert [(r["role"], r["ok"]) for r in result.json] == [("transport", False), ("store", False)]
    assert result.err.strip() == "dtimeout: error: cannot reach the transport and the store"


def test_check_a_wrong_url_wins_over_an_unreachable_one(cli: Run) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0?retries=0&connect_timeout=0.5"
    result = cli("--transport", down, "--store", "redis://127.0.0.1/0?bogus=1", "check")
    assert result.code == 2
    assert "unknown Redis URL option 'bogus'" in result.err


def test_version(cli: Run) -> None:
    result = cli("--version")
    assert (result.code, result.out.strip()) == (0, f"dtimeout {dtimeout.__version__}")


def test_python_dash_m_works_like_the_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtimeout",
            "--transport",
            "memory://",
            "--store",
            "memory://",
            "schedule",
            "k",
            "a",
            "--in",
            "1s",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "pending"
    bad = subprocess.run(
        [sys.executable, "-m", "dtimeout", "schedule", "k", "a", "--in", "soon"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "dtimeout: error: Invalid value for '--in': 'soon' is not a duration "
        "(use 500ms, 6s, 15m, 2h, 1d, 1m30s or a number of seconds) "
        "(see 'dtimeout schedule --help')"
    ]


def _write_app(directory: Path, url: str) -> None:
    """A user's app module: a Timeouts with one handler that appends to calls.txt."""
    (directory / "myapp.py").write_text(
        textwrap.dedent(
            f"""
            from dtimeout import Timeouts

            timeouts = Timeouts({url!r}, {url!r})

            @timeouts.handler("payment")
            def expired(t):
                with open("calls.txt", "a") as fh:
                    fh.write(t.key + "\\n")

            def factory():
                return timeouts

            not_an_app = 42
            """
        ),
        encoding="utf-8",
    )


def test_run_consume_burst_fires_what_was_not_cancelled(cli: Run, tmp_path: Path) -> None:
    url = "sqlite:///./jobs.db"
    _write_app(tmp_path, url)
    providers = ("--transport", url, "--store", url)
    for key in ("a", "b", "c"):
        assert cli(*providers, "schedule", "payment", key, "--in", "100ms").code == 0
    assert cli(*providers, "cancel", "payment", "b").code == 0

    sys.modules.pop("myapp", None)
    result = cli("run", "consume", "--app", "myapp:timeouts", "--burst", "--idle", "1s", "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert summary["fired"] == 2
    assert sorted((tmp_path / "calls.txt").read_text().split()) == ["a", "c"]

    sys.modules.pop("myapp", None)  # the run above closed its Timeouts, as a process exit would
    human = cli("run", "consume", "--app", "myapp:factory", "--once")
    assert human.code == 0, human.err
    assert "stopped: fired 0" in human.out


def test_run_consume_prints_fired_and_already_handled(cli: Run, tmp_path: Path) -> None:
    from dtimeout.interfaces import OutgoingMessage
    from dtimeout.model import TimeoutMessage

    _write_app(tmp_path, "memory://cli-events")
    sys.modules.pop("myapp", None)
    myapp = importlib.import_module("myapp")
    t = myapp.timeouts.schedule("payment", "fires", after=0.05)
    # At-least-once delivery: a second copy of the same message arrives after it fired.
    body = TimeoutMessage("payment", "fires", t.generation, t.due_at_ms).encode()
    myapp.timeouts.transport.send([OutgoingMessage("copy", body, t.due_at_ms + 300)])
    try:
        result = cli("run", "consume", "--app", "myapp:timeouts", "--burst", "--idle", "1s")
    finally:
        sys.modules.pop("myapp", None)
    assert result.code == 0, result.err
    assert "fired payment:fires (generation 1, attempt 1" in result.out
    assert "already handled payment:fires:1: fired" in result.out
    assert "stopped: fired 1, already handled 1 (fired 1)" in result.out


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nosuchmodule:timeouts", "no module named 'nosuchmodule'"),
        ("myapp:missing", "has no attribute 'missing'"),
        ("myapp:not_an_app", "is a int, not a dtimeout.Timeouts"),
        ("myapp", "module:attribute"),
    ],
)
def test_run_consume_bad_app(cli: Run, tmp_path: Path, spec: str, fragment: str) -> None:
    _write_app(tmp_path, "memory://")
    sys.modules.pop("myapp", None)
    try:
        assert_usage_error(cli("run", "consume", "--app", spec, "--once"), fragment)
    finally:
        sys.modules.pop("myapp", None)


def test_run_produce_schedules_and_completes(cli: Run) -> None:
    result = cli(
        "--transport",
        "memory://produce",
        "--store",
        "memory://produce",
        "run",
        "produce",
        "--count",
        "20",
        "--interval",
        "0",
        "--delay",
        "300ms",
        "--complete-ratio",
        "0.5",
        "--seed",
        "7",
        "--key-prefix",
        "p-",
        "--json",
    )
    assert result.code == 0, result.err
    summary = result.json
    assert summary["scheduled"] == 20
    completed = summary["completed"]
    assert 0 < sum(completed.values()) < 20  # seed 7: some, not all
    listed = cli(
        "--transport",
        "memory://produce",
        "--store",
        "memory://produce",
        "list",
        "--kind",
        "demo",
        "--json",
    ).json
    states = {r["key"]: r["state"] for r in listed}
    assert len(states) == 20
    assert list(states.values()).count("cancelled") == completed.get("cancelled", 0)


def test_demo_on_memory_passes_its_own_checks(cli: Run) -> None:
    result = cli(
        "--transport",
        "memory://",
        "--store",
        "memory://",
        "demo",
        "--count",
        "12",
        "--delay",
        "300ms",
        "--interval",
        "20ms",
        "--json",
    )
    assert result.code == 0, result.err
    tally = result.json
    assert tally["ok"] is True
    assert tally["scheduled"] == 12
    assert tally["cancelled"] + tally["fired"] == 12
    assert tally["duplicates"] == tally["lost"] == 0


def test_demo_uses_a_fresh_file_and_removes_it(cli: Run, tmp_path: Path) -> None:
    result = cli("demo", "--count", "6", "--delay", "200ms", "--interval", "10ms")
    assert result.code == 0, result.err
    assert "verdict" in result.out and "OK" in result.out
    assert "sqlite:///./.dtimeout/demo-" in result.out
    leftovers = sorted(p.name for p in (tmp_path / ".dtimeout").iterdir())
    assert leftovers == []  # neither the demo file nor the user's main database


def test_demo_exits_1_when_its_checks_fail(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from dtimeout import demo as demo_module
    from dtimeout.cli import demo as demo_cli

    def broken(*args: object, **kwargs: object) -> demo_module.DemoTally:
        return demo_module.DemoTally(scheduled=3, fired=3, duplicates=1)

    monkeypatch.setattr(demo_cli, "run_demo", broken)
    result = cli("--transport", "memory://", "--store", "memory://", "demo", "--json")
    assert result.code == 1
    assert result.json["ok"] is False
    assert result.err.strip() == "dtimeout: error: the demo failed its own checks: duplicates=1"


def test_plugins_add_commands_and_a_broken_one_is_skipped(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import typer

    class Hello:
        @hookimpl
        def dtimeout_register_commands(self, app: typer.Typer) -> None:
            @app.command("hello")
            def hello() -> None:
                print("hello from a plugin")

    class Broken:
        @hookimpl
        def dtimeout_register_commands(self, app: typer.Typer) -> None:
            raise RuntimeError("no commands today")

    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(Hello(), name="hello-plugin")
    pm.register(Broken(), name="broken-plugin")
    with caplog.at_level(logging.WARNING, logger="dtimeout.cli"):
        app = make_app(pm)
    command = typer.main.get_command(app)
    command.main(["hello"], prog_name="dtimeout", standalone_mode=False)
    assert capsys.readouterr().out.strip() == "hello from a plugin"
    assert any(
        "broken-plugin" in r.getMessage() and "no commands today" in r.getMessage()
        for r in caplog.records
    )


def test_internal_errors_are_one_line_too(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from dtimeout.cli import timeouts as timeouts_cli

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(timeouts_cli, "describe", explode)
    result = cli(
        "--transport", "memory://", "--store", "memory://", "schedule", "k", "a", "--in", "1s"
    )
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        "dtimeout: error: internal error: KeyError: 'surprise' "
        "(set DTIMEOUT_DEBUG=1 for the traceback)"
    ]
