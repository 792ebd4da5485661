"""``dtimeout-sqs`` reaches dtimeout through the ``dtimeout`` entry-point group like any third
party, its entry module stays cheap, and a missing boto3 says how to install it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from sqs_support import Queue

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.errors import ConfigurationError, MissingDependencyError
from dtimeout.plugins import make_plugin_manager
from dtimeout.registry import Registry
from dtimeout_sqs import plugin


def test_the_entry_point_names_the_plugin_module() -> None:
    (ep,) = [e for e in entry_points(group="dtimeout") if e.name == "sqs"]
    assert ep.value == "dtimeout_sqs.plugin"
    assert ep.dist is not None and ep.dist.name == "dtimeout-sqs"


def test_the_registry_finds_sqs_from_its_distribution() -> None:
    registry = Registry.from_plugin_manager(make_plugin_manager())
    info = registry.transports["sqs"]
    assert info.distribution == "dtimeout-sqs"
    assert info.factory is plugin.open_transport
    assert "sqs" not in registry.stores  # a transport only


def test_the_registry_opens_a_live_transport(queue: Queue) -> None:
    registry = Registry.from_plugin_manager(make_plugin_manager())
    transport = registry.open_transport(queue.sqs_url(), SYSTEM_CLOCK)
    try:
        transport.ping()
        assert transport.name == "sqs"
    finally:
        transport.close()


def test_the_entry_module_does_not_import_boto3() -> None:
    code = (
        "import sys, dtimeout_sqs.plugin; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_missing_boto3_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.startswith(("boto3", "botocore", "dtimeout_sqs.transport", "dtimeout_sqs.errors")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    monkeypatch.setitem(sys.modules, "botocore", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'dtimeout\[sqs\]'"):
        plugin.open_transport("sqs://orders?region=us-east-1", SYSTEM_CLOCK)


def test_a_bad_url_is_reported_before_any_import_or_request() -> None:
    with pytest.raises(ConfigurationError, match="credentials are not accepted"):
        plugin.open_transport("sqs://key:secret@orders", SYSTEM_CLOCK)
