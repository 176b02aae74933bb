"""Fixtures for end-to-end tests: a real OCI registry (Debian's docker-registry) seeded
with images built from the host's static busybox, and real `cove server` processes."""

import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
import mkimage  # noqa: E402
from harness import API_KEY, COVE_BIN, REGIONS, Cove, Registry, free_port, wait_until  # noqa: E402,F401


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is not installed: run scripts/setup.sh (make test does)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    mkimage.push_image(reg.url, "library/python", ["3.12", "3.11-slim", "3.12-slim"])
    mkimage.push_image(reg.url, "library/ubuntu", ["22.04"], seed="ubuntu")
    mkimage.push_image(reg.url, "library/multiarch", ["1.0"], index_arches=["arm64", "amd64"])
    mkimage.push_image(reg.url, "library/armonly", ["1.0"], index_arches=["arm64"])
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def big_image(registry):
    """A 48 MiB image: slow enough to kill the server in the middle of its pull."""
    mkimage.push_image(registry.url, "library/big", ["1.0"], random_mb=48, seed="big")
    return "big:1.0"


@pytest.fixture
def cove(tmp_path, registry):
    if not COVE_BIN.exists():
        pytest.fail(f"{COVE_BIN} is missing: build it with `cargo build` (make test does)")
    servers = []

    def make(extra=(), data_dir=None, mirror=registry.url):
        s = Cove(data_dir or tmp_path / f"data{len(servers)}", mirror, extra)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.kill(signal.SIGTERM)


@pytest.fixture
def server(cove):
    return cove()
