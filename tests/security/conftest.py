"""Fixtures of the attack suite (the servers and registry come from tests/conftest.py)."""

import pytest
from daytona import CreateSnapshotParams, Daytona, DaytonaConfig, Resources

from harness import API_KEY, BUSYBOX


@pytest.fixture
def env(cove):
    """A server with a small snapshot `small` (1 CPU, 1 GiB, 1 GiB disk) and an SDK client."""
    server = cove()
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="small", image=BUSYBOX, resources=Resources(cpu=1, memory=1, disk=1)))
    return server, daytona
