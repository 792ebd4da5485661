"""URL and credential parsing, the SDK client we build from them, and secrets staying secret."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, TransportType

from dtimeout.errors import ConfigurationError, MissingDependencyError
from dtimeout_azure import client as client_module
from dtimeout_azure.client import build_client, client_options
from dtimeout_azure.settings import CONNECTION_STRING_ENV, parse_url

KEY = "c2VjcmV0LWtleS1kby1ub3QtbGVhaw=="  # what must never show up anywhere
CONN = f"Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey={KEY}"
EMULATOR = (
    "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
    f"SharedAccessKey={KEY};UseDevelopmentEmulator=true;"
)


def test_namespace_short_and_long_forms_and_explicit_sdk_retries() -> None:
    short = parse_url("azure-servicebus://my-ns/orders", {})
    assert (short.namespace, short.queue) == ("my-ns.servicebus.windows.net", "orders")
    assert short.connection_string is None and "DefaultAzureCredential" in short.describe()
    full = parse_url(
        "azure-servicebus://my-ns.servicebus.windows.net/team/orders?retry_total=4"
        "&retry_backoff_factor=0.2&retry_backoff_max=8&retry_mode=fixed&transport=websockets"
        "&try_timeout=10"
        "&max_message_bytes=1048576&lock_renewal=off",
        {},
    )
    assert full.queue == "team/orders" and full.websockets and not full.lock_renewal
    assert (full.retry.total, full.retry.backoff_factor, full.retry.backoff_max) == (4, 0.2, 8.0)
    assert full.retry.mode == "fixed" and full.max_message_bytes == 1_048_576
    assert full.retry.try_timeout == 10.0
    options = client_options(short)
    assert options == {
        "retry_total": 2,
        "retry_backoff_factor": 0.5,
        "retry_backoff_max": 4.0,
        "retry_mode": "exponential",
        "try_timeout": 30.0,
        "transport_type": TransportType.Amqp,
    }
    assert client_options(full)["transport_type"] is TransportType.AmqpOverWebsocket


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://x/y", "not an azure-servicebus"),
        ("azure-servicebus:///orders", "must name a namespace"),
        ("azure-servicebus://my-ns", "must name a queue"),
        ("azure-servicebus://my-ns/bad queue!", "not a valid queue name"),
        ("azure-servicebus://my-ns/q?retry_total=many", "retry_total must be an integer"),
        ("azure-servicebus://my-ns/q?retry_total=99", "between 0 and 10"),
        ("azure-servicebus://my-ns/q?retry_mode=random", "retry_mode"),
        ("azure-servicebus://my-ns/q?transport=http", "transport must be"),
        ("azure-servicebus://my-ns/q?prefetch=10", "unknown option 'prefetch'"),
        ("azure-servicebus://my-ns/q?lock_renewal=maybe", "on or off"),
    ],
)
def test_bad_urls_are_one_line_configuration_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        parse_url(url, {})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"azure-servicebus://app:{KEY}@my-ns/orders",
        f"azure-servicebus://my-ns/orders?SharedAccessKey={KEY}",
        f"azure-servicebus://my-ns/orders?connection_string={KEY}",
        f"azure-servicebus://my-ns/orders?sas={KEY}",
    ],
)
def test_credentials_in_the_url_are_refused_without_being_repeated(url: str) -> None:
    with pytest.raises(ConfigurationError, match="credentials are not accepted") as info:
        parse_url(url, {})
    assert KEY not in str(info.value)


def test_connection_string_from_the_environment_never_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = parse_url("azure-servicebus://my-ns/orders", {CONNECTION_STRING_ENV: CONN})
    assert settings.connection_string == CONN
    assert KEY not in repr(settings) and KEY not in settings.describe()
    assert CONNECTION_STRING_ENV in settings.credential_source
    client = build_client(settings)  # the real SDK client: nothing is connected yet
    assert client.fully_qualified_namespace == "my-ns.servicebus.windows.net"
    client.close()
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("conn", "match"),
    [
        ("no pairs here", "malformed"),
        (f"SharedAccessKeyName=app;SharedAccessKey={KEY}", "no Endpoint"),
        ("Endpoint=sb://my-ns.servicebus.windows.net/;SharedAccessKeyName=app", "neither"),
        (CONN.replace("my-ns", "other-ns"), "is for namespace 'other-ns.servicebus.windows.net'"),
        (CONN + ";EntityPath=payments", "scoped to queue 'payments'"),
    ],
)
def test_connection_string_mistakes_are_named_without_the_key(conn: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        parse_url("azure-servicebus://my-ns/orders", {CONNECTION_STRING_ENV: conn})
    assert KEY not in str(info.value)


def test_emulator_connection_string_builds_a_plain_amqp_client() -> None:
    with pytest.raises(ConfigurationError, match="needs DTIMEOUT_AZURE_CONNECTION_STRING"):
        parse_url("azure-servicebus://localhost/queue.1", {})
    settings = parse_url("azure-servicebus://localhost/queue.1", {CONNECTION_STRING_ENV: EMULATOR})
    assert settings.emulator and settings.namespace == "localhost"
    client = build_client(settings)
    assert client.fully_qualified_namespace == "localhost"
    client.close()
    custom_port = EMULATOR.replace("sb://localhost", "sb://localhost:5673")
    assert parse_url("azure-servicebus://localhost:5673/q", {CONNECTION_STRING_ENV: custom_port})
    with pytest.raises(ConfigurationError, match="is for namespace"):
        parse_url("azure-servicebus://localhost:5999/q", {CONNECTION_STRING_ENV: custom_port})


def test_sdk_receives_the_retry_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def capture(conn: str, **kwargs: Any) -> str:
        seen.update(kwargs)
        return "client"

    monkeypatch.setattr(ServiceBusClient, "from_connection_string", staticmethod(capture))
    settings = parse_url(
        "azure-servicebus://my-ns/orders?retry_total=1", {CONNECTION_STRING_ENV: CONN}
    )
    assert build_client(settings) == "client"
    assert seen["retry_total"] == 1 and seen["retry_backoff_max"] == 4.0


def test_default_azure_credential_is_used_against_the_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[object] = []

    class DefaultAzureCredential:
        def __init__(self) -> None:
            made.append(self)

        def get_token(self, *scopes: str, **kwargs: Any) -> Any:  # never called: no I/O here
            raise AssertionError("no token should be requested at construction")

    identity = types.ModuleType("azure.identity")
    identity.DefaultAzureCredential = DefaultAzureCredential  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.identity", identity)
    client = build_client(parse_url("azure-servicebus://my-ns/orders", {}))
    assert client.fully_qualified_namespace == "my-ns.servicebus.windows.net"
    assert len(made) == 1
    client.close()


def test_without_identity_package_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    with pytest.raises(MissingDependencyError, match=r"dtimeout-azure\[identity\]"):
        client_module.build_client(parse_url("azure-servicebus://my-ns/orders", {}))
