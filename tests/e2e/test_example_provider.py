"""The example provider from docs/examples, built and installed like a third party's.

It is built into a wheel with hatchling (offline, no build isolation) and installed with
``uv pip install --target`` into a folder put on ``PYTHONPATH``; then ``python -m dtimeout``
must find it through the ``dtimeout`` entry-point group and use it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "dtimeout-example-provider"


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder holding the installed example provider."""
    work = tmp_path_factory.mktemp("example-provider")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)
    built = _run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(work / "dist")],
        cwd=source,
    )
    assert built.returncode == 0, built.stderr
    wheels = list((work / "dist").glob("dtimeout_example_provider-0.1.0-*.whl"))
    assert len(wheels) == 1
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed to install the example (it runs this test suite)"
    site = work / "site"
    install = _run(
        [
            uv,
            "pip",
            "install",
            "--offline",
            "--no-deps",
            "--python",
            sys.executable,
            "--target",
            str(site),
            str(wheels[0]),
        ]
    )
    assert install.returncode == 0, install.stderr
    return site


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def test_providers_lists_the_installed_example(installed: Path, tmp_path: Path) -> None:
    result = _run(
        [sys.executable, "-m", "dtimeout", "providers", "--json"], cwd=tmp_path, env=_env(installed)
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    example = [p for p in data["providers"] if p["scheme"] == "example"]
    assert {(p["role"], p["distribution"], p["version"], p["plugin"]) for p in example} == {
        ("transport", "dtimeout-example-provider", "0.1.0", "example"),
        ("store", "dtimeout-example-provider", "0.1.0", "example"),
    }
    text = _run([sys.executable, "-m", "dtimeout", "providers"], cwd=tmp_path, env=_env(installed))
    row = "example\ttransport\texample\texample\tdtimeout-example-provider\t0.1.0"
    assert row in text.stdout  # scheme, role, name, plugin, distribution, version


def test_the_example_scheme_works(installed: Path, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "dtimeout",
        "--transport",
        "example://docs",
        "--store",
        "example://docs",
    ]
    scheduled = _run(
        [*args, "schedule", "k", "a", "--in", "1m", "--json"], cwd=tmp_path, env=_env(installed)
    )
    assert scheduled.returncode == 0, scheduled.stderr
    assert json.loads(scheduled.stdout)["state"] == "pending"
    check = _run([*args, "check"], cwd=tmp_path, env=_env(installed))
    assert check.returncode == 0, check.stderr


def test_without_the_example_the_scheme_is_unknown(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
    result = _run(
        [sys.executable, "-m", "dtimeout", "--transport", "example://docs", "check"],
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2
    assert "unknown transport scheme 'example'" in result.stderr
