"""The docs are tested: hook signatures, the CLI reference, and the quick-start snippets run.

- every hook spec in ``dtimeout/hookspecs.py`` appears in ``docs/plugin-hooks.md`` with its exact
  signature (taken from the source, so a changed annotation fails here), and the page documents
  no hook that does not exist;
- every command and option of the CLI has its place in ``docs/cli.md``;
- every ```python block of README.md, docs/index.md and docs/concepts.md runs, and every
  ``$ dtimeout ...`` line of the README's console blocks exits 0, in a fresh directory.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

import dtimeout.hookspecs
from dtimeout.cli import make_app

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
RUNNABLE = [ROOT / "README.md", DOCS / "index.md", DOCS / "concepts.md"]


def _hook_signatures() -> dict[str, str]:
    source = Path(dtimeout.hookspecs.__file__).read_text(encoding="utf-8")
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("dtimeout_"):
            returns = ast.unparse(node.returns) if node.returns else "None"
            out[node.name] = f"def {node.name}({ast.unparse(node.args)}) -> {returns}"
    return out


def test_hooks_found_in_source() -> None:
    hooks = _hook_signatures()
    assert "dtimeout_register_transports" in hooks
    assert len(hooks) >= 9


@pytest.mark.parametrize("name", sorted(_hook_signatures()))
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    page = (DOCS / "plugin-hooks.md").read_text(encoding="utf-8")
    assert f"### {name}\n" in page, f"docs/plugin-hooks.md has no section for {name}"
    section = page.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
    assert _hook_signatures()[name] in section, f"signature of {name} differs in the docs"


def test_the_hook_page_documents_no_hook_that_does_not_exist() -> None:
    page = (DOCS / "plugin-hooks.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^### (dtimeout_\w+)$", page, flags=re.MULTILINE))
    assert documented == set(_hook_signatures())


def _commands() -> dict[str, list[str]]:
    """``command path`` → its long options (``""`` is the root: the global options)."""
    root: Any = typer.main.get_command(make_app())
    found: dict[str, list[str]] = {}

    def walk(command: Any, path: str) -> None:
        options = [
            opt
            for param in command.params
            if param.param_type_name == "option"
            for opt in param.opts
            if opt.startswith("--") and opt != "--help"
        ]
        found[path] = options
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(root, "")
    return found


def _cli_sections() -> dict[str, str]:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for chunk in page.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        match = re.fullmatch(r"`dtimeout ([a-z ]+)`", title.strip())
        sections[match.group(1) if match else title.strip()] = body
    return sections


def test_cli_reference_covers_every_command_and_option() -> None:
    sections = _cli_sections()
    missing = []
    for path, options in _commands().items():
        if path in ("", "run"):
            body = sections["Global options"] if path == "" else sections["run consume"]
        elif path not in sections:
            missing.append(f"section for `dtimeout {path}`")
            continue
        else:
            body = sections[path]
        missing += [f"{option} of `dtimeout {path}`" for option in options if option not in body]
    assert missing == []
    for code in ("| 0 |", "| 1 |", "| 2 |"):
        assert code in sections["Exit codes and errors"]


def _blocks(path: Path, language: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTIMEOUT_")}
    env["DTIMEOUT_LOG_LEVEL"] = "ERROR"
    return env


SNIPPETS = [
    pytest.param(block, id=f"{path.name}-{index}")
    for path in RUNNABLE
    for index, block in enumerate(_blocks(path, "python"))
]


def test_there_are_snippets_to_run() -> None:
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("code", SNIPPETS)
def test_python_snippets_run(code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_readme_cli_quick_start_runs(tmp_path: Path) -> None:
    lines = [
        line[2:]
        for block in _blocks(ROOT / "README.md", "console")
        for line in block.splitlines()
        if line.startswith("$ dtimeout ")
    ]
    assert len(lines) >= 4
    for line in lines:
        args = shlex.split(line)[1:]
        result = subprocess.run(
            [sys.executable, "-m", "dtimeout", *args],
            cwd=tmp_path,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (line, result.stderr)
