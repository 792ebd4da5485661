"""``dtimeout bench`` runs end to end on Redis and reports every figure; no speed is asserted
(speed lives in benchmarks/, never in tests). Also: the Lua scripts ship in the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dtimeout.bench import BenchOptions, percentiles, run_bench
from dtimeout.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_percentiles_use_nearest_rank() -> None:
    assert percentiles(list(range(1, 101))) == {
        "p50": 50.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
        "n": 100,
    }
    assert percentiles([])["n"] == 0


def test_bench_reports_every_phase_on_redis(redis_url: str) -> None:
    url = f"{redis_url}?prefix=bench{id(object())}"
    options = BenchOptions(
        url, url, count=300, single=40, batch=100, rate=400, duration=0.5, delay=0.2
    )
    report = run_bench(options).as_dict()["results"]
    assert report["single"]["schedule_per_s"] > 0 and report["batched"]["cancel_many_per_s"] > 0
    assert report["fire"]["fired"] == 300
    assert report["lateness"]["fired"] == report["lateness"]["offered"] == 200
    assert report["lateness"]["lateness_ms"]["p50"] >= 0  # handlers never start before due
    consumer = report["consumer"]
    assert consumer["stats"]["fired"] == 500 and consumer["peak_rss_mb"] > 0
    assert 0 < consumer["round_trips_per_fired"] < 1


def test_bench_command_prints_json_and_masks_the_password(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_url.replace("redis://", "redis://:not-a-secret@") + "?prefix=benchcli"
    small = ["--count", "50", "--single", "10", "--batch", "50", "--phases", "single,batched"]
    code = main(["--transport", url, "--store", url, "bench", *small, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert set(data["results"]) == {"single", "batched"}
    assert "not-a-secret" not in out.out


def test_bench_refuses_an_unknown_phase(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--phases", "warp"]) == 2
    assert "unknown bench phase" in capsys.readouterr().err


def test_the_wheel_ships_the_lua_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT / "dtimeout_core",
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("dtimeout-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = ROOT / "dtimeout_core/dtimeout/providers/redis/scripts"
    expected = {f"dtimeout/providers/redis/scripts/{p.name}" for p in scripts.glob("*.lua")}
    assert len(expected) >= 17 and expected <= names
