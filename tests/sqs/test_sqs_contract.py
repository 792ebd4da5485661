"""The provider contract suite with ``sqs://`` (moto's server over HTTP) as the transport.

SQS delays are real seconds, so every class runs in real time. The store is Redis (the seed's
AWS path: SQS for the delays, Redis for the states), a fresh key prefix per instance; each
transport gets a fresh queue with a redrive DLQ, as a production queue would have.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqs_support import MakeQueue

from dtimeout.clock import Clock
from dtimeout.interfaces import Store, Transport
from dtimeout.providers.redis.plugin import open_store
from dtimeout.testing import MultiProcessContract, TimeoutsContract, TransportContract
from dtimeout_sqs.plugin import open_transport


def _fresh_prefix(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix=sqs{uuid.uuid4().hex[:12]}"


class _Factories:
    real_time = True

    @pytest.fixture
    def make_transport(self, make_queue: MakeQueue) -> Callable[[Clock], Transport]:
        return lambda clock: open_transport(make_queue(redrive=10).sqs_url(), clock)

    @pytest.fixture
    def make_store(self, redis_url: str) -> Callable[[Clock], Store]:
        return lambda clock: open_store(_fresh_prefix(redis_url), clock)


class TestSqsTransportContract(_Factories, TransportContract):
    pass


class TestSqsTimeoutsContract(_Factories, TimeoutsContract):
    pass


@pytest.mark.slow
class TestSqsMultiProcess(MultiProcessContract):
    @pytest.fixture
    def transport_url(self, make_queue: MakeQueue) -> str:
        return make_queue(redrive=10).sqs_url()

    @pytest.fixture
    def store_url(self, redis_url: str) -> str:
        return _fresh_prefix(redis_url)
