"""``providers`` (what is installed) and ``check`` (can we reach what is configured).

``providers`` must work when a plugin is broken — that is when people run it — so it lists
what loaded and names what did not, with the error, and still exits 0. Two plugins claiming one
scheme are listed the same way (the scheme is then served by neither). The ``plugin`` column is
the name ``DTIMEOUT_DISABLE_PLUGINS`` takes.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import typer

from dtimeout.cli.context import echo, get_state, print_json, render_table
from dtimeout.cli.errors import CommandFailed, one_line
from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.errors import ConfigurationError, DtimeoutError
from dtimeout.registry import mask_url


def register(app: typer.Typer) -> None:
    app.command()(providers)
    app.command()(check)


def providers(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List installed providers: scheme, role, name, plugin, distribution, version."""
    registry = get_state(ctx).registry
    entries: list[dict[str, Any]] = []
    for role, table in (("transport", registry.transports), ("store", registry.stores)):
        for scheme, info in sorted(table.items()):
            entries.append(
                {
                    "scheme": scheme,
                    "role": role,
                    "name": info.name,
                    "plugin": info.plugin,
                    "distribution": info.distribution,
                    "version": info.version,
                    "description": info.description,
                }
            )
    entries.sort(key=lambda e: (e["scheme"], e["role"]))
    failures = [
        {"name": f.name, "distribution": f.distribution, "error": f.error}
        for f in registry.failures
    ]
    if as_json:
        print_json({"providers": entries, "failures": failures})
        return
    rows = [
        [
            e["scheme"],
            e["role"],
            e["name"],
            e["plugin"] or "-",
            e["distribution"] or "-",
            e["version"] or "-",
            e["description"],
        ]
        for e in entries
    ]
    render_table(
        "providers",
        ["scheme", "role", "name", "plugin", "distribution", "version", "description"],
        rows,
    )
    for failure in registry.failures:
        origin = f" ({failure.distribution})" if failure.distribution else ""
        echo(f"broken plugin {failure.name}{origin}: {failure.error}")


def check(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Ping the configured transport and store; exit 1 when one cannot be reached.

    A URL that is wrong (unknown scheme, bad option) exits 2 instead: that is configuration,
    not reachability.
    """
    state = get_state(ctx)
    settings = state.settings
    registry = state.registry
    roles = (("transport", settings.transport), ("store", settings.store))

    def probe(role: str, url: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "role": role,
            "url": mask_url(url),
            "source": settings.source_of(role),
        }
        started = time.perf_counter()
        try:
            provider: Any = (
                registry.open_transport(url, SYSTEM_CLOCK)
                if role == "transport"
                else registry.open_store(url, SYSTEM_CLOCK)
            )
            try:
                provider.ping()
            finally:
                provider.close()
        except ConfigurationError:
            raise
        except DtimeoutError as exc:
            entry.update(ok=False, error=one_line(str(exc)))
        else:
            entry.update(ok=True, ms=round((time.perf_counter() - started) * 1000, 1))
        return entry

    # Both at once: an unreachable server costs its client's whole retry budget, and waiting
    # for one before asking the other would double it. A wrong URL (transport first) wins.
    with ThreadPoolExecutor(max_workers=len(roles), thread_name_prefix="check") as pool:
        futures = [pool.submit(probe, role, url) for role, url in roles]
    results = [future.result() for future in futures]
    if as_json:
        print_json(results)
    else:
        for r in results:
            outcome = f"ok ({r['ms']} ms)" if r["ok"] else f"UNREACHABLE: {r['error']}"
            echo(f"{r['role']:<9} {r['url']}  [{r['source']}]  {outcome}")
    down = [r["role"] for r in results if not r["ok"]]
    if down:
        raise CommandFailed(f"cannot reach the {' and the '.join(down)}")
