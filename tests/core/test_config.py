"""Settings precedence (CLI > environment > dtimeout.toml > pyproject > default) and errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dtimeout.config import (
    DEFAULT_URL,
    Settings,
    known_env_vars,
    load_settings,
    misspelled_env_vars,
)
from dtimeout.errors import ConfigurationError
from dtimeout.model import OrphanPolicy


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(cwd=tmp_path, environ={})
    assert settings == Settings()
    assert (
        settings.transport == settings.store == DEFAULT_URL == "sqlite:///./.dtimeout/dtimeout.db"
    )
    assert settings.retention == timedelta(days=7)
    assert settings.max_attempts == 5
    assert settings.orphans is OrphanPolicy.FIRE
    assert settings.source_of("transport") == "default"


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.dtimeout]\n'
        'transport = "memory://py"\nstore = "memory://py"\napp = "py:app"\n'
        'retention = "1d"\nlease = "10s"\n',
        encoding="utf-8",
    )
    (tmp_path / "dtimeout.toml").write_text(
        'transport = "memory://toml"\nstore = "memory://toml"\nretention = "2d"\n'
        "max-attempts = 3\n",
        encoding="utf-8",
    )
    env = {"DTIMEOUT_TRANSPORT": "memory://env", "DTIMEOUT_MAX_ATTEMPTS": "4"}

    settings = load_settings(cwd=tmp_path, environ=env, transport="memory://cli", lease=None)

    assert settings.transport == "memory://cli"  # CLI beats everything
    assert settings.max_attempts == 4  # env beats dtimeout.toml
    assert settings.store == "memory://toml"  # dtimeout.toml beats pyproject
    assert settings.retention == timedelta(days=2)
    assert settings.app == "py:app"  # pyproject beats the default
    assert settings.lease == timedelta(seconds=10)  # None from the CLI means "not given"
    assert settings.source_of("transport") == "--transport"
    assert settings.source_of("max_attempts") == "DTIMEOUT_MAX_ATTEMPTS"
    assert settings.source_of("store").endswith("dtimeout.toml key 'store'")


def test_typed_values_from_the_environment(tmp_path: Path) -> None:
    env = {
        "DTIMEOUT_RETENTION": "30d",
        "DTIMEOUT_LEASE": "1m30s",
        "DTIMEOUT_ORPHANS": "DROP",
        "DTIMEOUT_CONCURRENCY": "8",
        "DTIMEOUT_BATCH_SIZE": "50",
        "DTIMEOUT_LOG_LEVEL": "debug",
        "DTIMEOUT_APP": "myapp.timeouts:timeouts",
    }
    settings = load_settings(cwd=tmp_path, environ=env)
    assert settings.retention == timedelta(days=30)
    assert settings.lease == timedelta(seconds=90)
    assert settings.orphans is OrphanPolicy.DROP
    assert (settings.concurrency, settings.batch_size) == (8, 50)
    assert settings.log_level == "DEBUG"
    assert settings.app == "myapp.timeouts:timeouts"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DTIMEOUT_RETENTION": "soon"}, ["DTIMEOUT_RETENTION", "'soon'"]),
        ({"DTIMEOUT_RETENTION": "0s"}, ["DTIMEOUT_RETENTION", "longer than zero"]),
        ({"DTIMEOUT_MAX_ATTEMPTS": "0"}, ["DTIMEOUT_MAX_ATTEMPTS", "at least 1"]),
        ({"DTIMEOUT_CONCURRENCY": "two"}, ["DTIMEOUT_CONCURRENCY", "integer"]),
        ({"DTIMEOUT_ORPHANS": "keep"}, ["DTIMEOUT_ORPHANS", "fire or drop"]),
        ({"DTIMEOUT_TRANSPORT": "localhost"}, ["DTIMEOUT_TRANSPORT", "provider URL"]),
        ({"DTIMEOUT_APP": "myapp"}, ["DTIMEOUT_APP", "module:attribute"]),
        ({"DTIMEOUT_LOG_LEVEL": "loud"}, ["DTIMEOUT_LOG_LEVEL"]),
    ],
)
def test_bad_environment_values_name_the_variable(
    tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(cwd=tmp_path, environ=env)
    for name in names:
        assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_cli_value_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--max-attempts: invalid value -1"):
        load_settings(cwd=tmp_path, environ={}, max_attempts=-1)


def test_unknown_key_in_file_gets_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "dtimeout.toml").write_text('transprt = "memory://"\n', encoding="utf-8")
    expected = r"unknown key 'transprt' \(did you mean 'transport'"
    with pytest.raises(ConfigurationError, match=expected):
        load_settings(cwd=tmp_path, environ={})


def test_bad_value_in_pyproject_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dtimeout]\nlease = "forever"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigurationError) as info:
        load_settings(cwd=tmp_path, environ={})
    assert "[tool.dtimeout]" in str(info.value) and "'lease'" in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "dtimeout.toml").write_text("transport = \n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(cwd=tmp_path, environ={})


def test_dtimeout_config_points_at_another_file(tmp_path: Path) -> None:
    other = tmp_path / "conf" / "prod.toml"
    other.parent.mkdir()
    other.write_text('store = "memory://prod"\n', encoding="utf-8")
    (tmp_path / "dtimeout.toml").write_text('store = "memory://local"\n', encoding="utf-8")
    settings = load_settings(cwd=tmp_path, environ={"DTIMEOUT_CONFIG": str(other)})
    assert settings.store == "memory://prod"
    with pytest.raises(ConfigurationError, match="DTIMEOUT_CONFIG: no such file"):
        load_settings(cwd=tmp_path, environ={"DTIMEOUT_CONFIG": str(tmp_path / "missing.toml")})


def test_unknown_override_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="trasnport"):
        load_settings(cwd=tmp_path, environ={}, trasnport="memory://")


def test_reads_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DTIMEOUT_STORE", "memory://from-env")
    assert load_settings().store == "memory://from-env"


@pytest.mark.parametrize("where", ["dtimeout.toml", "pyproject.toml"])
def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path, where: str) -> None:
    (tmp_path / where).write_bytes(b"[tool.dtimeout]\ntransport = 'caf\xe9'\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings(cwd=tmp_path, environ={})
    message = str(info.value)
    assert message.startswith(str(tmp_path / where))
    assert "not valid TOML/UTF-8" in message and "0xe9" in message
    assert "\n" not in message


def test_misspelled_environment_variables_are_found_with_a_suggestion() -> None:
    environ = {
        "DTIMEOUT_TRANSPRT": "memory://",
        "DTIMEOUT_MAX_ATEMPTS": "3",
        "DTIMEOUT_STORE": "memory://",  # known
        "DTIMEOUT_AZURE_QUEUE": "q",  # read by dtimeout-azure
        "DTIMEOUT_DISABLE_PLUGIN": "x",  # close to DTIMEOUT_DISABLE_PLUGINS
        "DTIMEOUT_RABBITMQ_URL": "amqp://",  # another provider's own: close to nothing
        "TRANSPRT": "not ours",
    }
    assert misspelled_env_vars(environ) == [
        ("DTIMEOUT_DISABLE_PLUGIN", "DTIMEOUT_DISABLE_PLUGINS"),
        ("DTIMEOUT_MAX_ATEMPTS", "DTIMEOUT_MAX_ATTEMPTS"),
        ("DTIMEOUT_TRANSPRT", "DTIMEOUT_TRANSPORT"),
    ]
    assert "DTIMEOUT_ORPHANS" in known_env_vars()
