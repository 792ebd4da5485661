"""One-shot commands on a real SQS API (moto in server mode) print one line, not two.

``dtimeout-sqs`` warns when the queue has no redrive policy: dead-lettered messages would be
logged and deleted. That advice belongs to ``check`` and to the consumer's log; printed by every
``schedule`` and ``cancel`` it turned each one-line answer (or one-line error) into two. The
CLI shows library warnings in one-shot commands only when the user chose a log level.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from dtimeout_sqs.testing import FAKE_CREDENTIALS, MotoServer

pytestmark = pytest.mark.slow

REDRIVE_WARNING = "no redrive policy"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def sqs_url(moto: MotoServer) -> str:
    """A fresh standard queue without a redrive policy, as an ``sqs://`` URL."""
    name = f"cli-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "sqs",
        endpoint_url=moto.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_queue(QueueName=name)
    return f"sqs://{name}?region=us-east-1&endpoint_url={moto.endpoint_url}"


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DTIMEOUT_", "AWS_"))}
    base.update(FAKE_CREDENTIALS)
    base["AWS_CONFIG_FILE"] = "/nonexistent/dtimeout-tests/config"
    base["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/dtimeout-tests/credentials"
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dtimeout", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_one_shot_commands_on_sqs_print_only_their_line(tmp_path: Path, sqs_url: str) -> None:
    scheduled = _run(tmp_path, "--transport", sqs_url, "schedule", "k", "a", "--in", "1h")
    assert scheduled.returncode == 0, scheduled.stderr
    assert scheduled.stderr == ""
    assert scheduled.stdout.startswith("scheduled k:a pending")

    cancelled = _run(tmp_path, "--transport", sqs_url, "cancel", "k", "a")
    assert (cancelled.returncode, cancelled.stdout.strip(), cancelled.stderr) == (
        0,
        "k:a cancelled",
        "",
    )

    # An error stays one line: a payload over the queue's size limit, refused before sending.
    big = tmp_path / "big.json"
    big.write_text('"' + "x" * 2_000_000 + '"', encoding="utf-8")
    refused = _run(
        tmp_path,
        "--transport",
        sqs_url,
        "schedule",
        "k",
        "b",
        "--in",
        "1h",
        "--payload",
        "@big.json",
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("dtimeout: error: timeout k:b: its message would be")


def test_the_warning_shows_where_it_helps(tmp_path: Path, sqs_url: str) -> None:
    chosen = _run(
        tmp_path, "--transport", sqs_url, "schedule", "k", "a", "--in", "1h",
        DTIMEOUT_LOG_LEVEL="WARNING",
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert "dtimeout: warning: sqs: queue" in chosen.stderr and REDRIVE_WARNING in chosen.stderr

    check = _run(tmp_path, "--transport", sqs_url, "check")
    assert check.returncode == 0, check.stderr
    assert REDRIVE_WARNING in check.stderr
