"""``sqlite://`` URLs: what they mean, and a one-line ConfigurationError for what is wrong."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dtimeout.clock import FakeClock
from dtimeout.errors import ConfigurationError
from dtimeout.providers.sqlite import DEFAULT_URL, open_store, open_transport
from dtimeout.providers.sqlite_db import SqliteSettings


def test_default_url_is_relative_to_the_working_directory() -> None:
    settings = SqliteSettings.from_url(DEFAULT_URL)
    assert settings.path == Path(".dtimeout/dtimeout.db")
    assert not settings.path.is_absolute()
    assert (settings.busy_timeout_ms, settings.synchronous) == (5000, "normal")


def test_three_slashes_relative_four_absolute() -> None:
    assert SqliteSettings.from_url("sqlite:///data/t.db").path == Path("data/t.db")
    assert SqliteSettings.from_url("sqlite:////var/lib/t.db").path == Path("/var/lib/t.db")


def test_home_is_expanded() -> None:
    assert SqliteSettings.from_url("sqlite:///~/t.db").path == Path("~/t.db").expanduser()


def test_options_are_typed() -> None:
    s = SqliteSettings.from_url(
        "sqlite:///t.db?busy_timeout=250&lock_retries=3&synchronous=FULL"
        "&poll_interval=10&purge_interval=0"
    )
    assert (s.busy_timeout_ms, s.lock_retries, s.synchronous) == (250, 3, "full")
    assert (s.poll_interval_ms, s.purge_interval_ms) == (10, 0)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis:///t.db", "not a sqlite URL"),
        ("sqlite://host/t.db", "names a host 'host'"),
        ("sqlite:///", "has no file name"),
        ("sqlite:///dir/", "has no file name"),
        ("sqlite://", "has no file name"),
        ("sqlite:///:memory:", "only files are supported"),
        ("sqlite:///t.db#x", "fragment"),
        ("sqlite:///t.db?busy=1", "unknown sqlite URL option 'busy'"),
        ("sqlite:///t.db?busy_timeout=soon", "busy_timeout must be an integer >= 0, got 'soon'"),
        ("sqlite:///t.db?busy_timeout=-1", "busy_timeout must be an integer >= 0"),
        ("sqlite:///t.db?poll_interval=0", "poll_interval must be an integer >= 1"),
        ("sqlite:///t.db?synchronous=fast", "synchronous must be one of off, normal, full"),
        ("sqlite:///t.db?lock_retries=1&lock_retries=2", "'lock_retries' is given twice"),
    ],
)
def test_bad_urls_say_what_is_wrong_in_one_line(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SqliteSettings.from_url(url)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_factories_refuse_bad_urls_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown sqlite URL option"):
        open_store(f"sqlite:///{tmp_path}/x.db?nope=1", FakeClock())
    with pytest.raises(ConfigurationError, match="names a host"):
        open_transport("sqlite://h/x.db", FakeClock())
    assert list(tmp_path.iterdir()) == []


def test_relative_path_creates_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(DEFAULT_URL, FakeClock())
    try:
        assert (tmp_path / ".dtimeout" / "dtimeout.db").is_file()
    finally:
        store.close()


def test_a_path_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="cannot create the directory") as info:
        open_store(f"sqlite:///{blocker}/sub/t.db", FakeClock())
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_a_database_is_a_configuration_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an sqlite file at all" * 100)
    with pytest.raises(ConfigurationError, match=r"junk\.db"):
        open_transport(f"sqlite:///{junk}", FakeClock())


def test_an_sqlite_library_without_upserts_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 22, 0))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.22.0")
    with pytest.raises(ConfigurationError, match=r"needs SQLite 3\.24\.0 or newer.*uses 3\.22\.0"):
        open_store(f"sqlite:///{tmp_path}/old.db", FakeClock())
