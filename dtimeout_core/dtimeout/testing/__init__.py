"""The provider contract test-kit: one semantic suite for every transport and store.

A provider is done when it passes this suite against a real server. Use it from your own tests::

    import pytest
    from dtimeout.testing import StoreContract, TransportContract, TimeoutsContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def make_store(self, my_server):
            return lambda clock: MyStore(my_server.url, clock=clock, prefix=unique())

    class TestMyTransport(TransportContract):
        @pytest.fixture
        def make_transport(self, my_server):
            return lambda clock: MyTransport(..., clock=clock)

    class TestEndToEnd(TimeoutsContract):
        make_store = ...      # fixtures as above
        make_transport = ...

Factories must return a fresh, empty instance on every call. Set ``real_time = True`` on a class
when the provider cannot follow a :class:`~dtimeout.clock.FakeClock` (a broker whose delays are
real seconds); the suite then uses the system clock and short real waits. Subclass
:class:`MultiProcessContract` (fixtures ``transport_url`` and ``store_url``) for the tests that
race real processes against one shared server.
"""

from dtimeout.clock import FakeClock
from dtimeout.testing.contracts import StoreContract, TransportContract
from dtimeout.testing.helpers import CountingStore, CountingTransport, pump
from dtimeout.testing.processes import MultiProcessContract
from dtimeout.testing.scenarios import TimeoutsContract

__all__ = [
    "CountingStore",
    "CountingTransport",
    "FakeClock",
    "MultiProcessContract",
    "StoreContract",
    "TimeoutsContract",
    "TransportContract",
    "pump",
]
