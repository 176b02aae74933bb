"""Fixtures for end-to-end tests: a real OCI registry (Debian's docker-registry) seeded
with images built from the host's static busybox, and real `cove server` processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import mkimage  # noqa: E402

COVE_BIN = Path(os.environ.get("COVE_BIN", ROOT / "target" / "debug" / "cove"))
API_KEY = "cove-test-admin-key"
REGIONS = ["us", "eu", "us-east-1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Registry:
    def __init__(self, workdir: Path, htpasswd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        auth = f"auth: {{htpasswd: {{realm: basic-realm, path: {htpasswd}}}}}\n" if htpasswd else ""
        cfg = workdir / "config.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log: {level: warn, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\n" + auth
        )
        self.log = open(workdir / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self.log, stderr=self.log)
        wait_until(self._up, 15, what="docker-registry to answer")

    def _up(self):
        try:
            urllib.request.urlopen(self.url + "/v2/", timeout=1)
            return True
        except urllib.error.HTTPError as e:
            return e.code == 401
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class Cove:
    """A `cove server` process with its own data directory and port."""

    def __init__(self, data_dir: Path, mirror: str | None, extra=()):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url + "/api"
        self.mirror = mirror
        self.extra = list(extra)
        self.proc = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self, env_key=API_KEY):
        args = [str(COVE_BIN), "server", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        for r in REGIONS:
            args += ["--region", r]
        if self.mirror:
            args += ["--registry-mirror", f"docker.io={self.mirror}"]
        args += self.extra
        env = dict(os.environ, COVE_LOG="info,cove_image=debug")
        env.pop("COVE_API_KEY", None)
        if env_key:
            env["COVE_API_KEY"] = env_key
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env)
        wait_until(self._healthy, 20, what="cove server health")
        return self

    def _healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"cove server exited with {self.proc.returncode}; log: {self.log_path.read_text()[-3000:]}")
        try:
            return urllib.request.urlopen(self.api_url + "/health", timeout=1).status == 200
        except OSError:
            return False

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        if self.proc:
            self.log.close()

    def api(self, method, path, body=None, key=API_KEY, raw=None):
        """Returns (status, parsed JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text, ctype = r.status, r.read().decode(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, text, ctype = e.code, e.read().decode(), e.headers.get("Content-Type", "")
        if "json" in ctype and text:
            return status, json.loads(text)
        return status, text

    def wait_state(self, id_or_name, states=("active", "error", "build_failed"), timeout=60, key=API_KEY):
        def done():
            st, body = self.api("GET", f"/snapshots/{id_or_name}", key=key)
            assert st == 200, body
            return body if body["state"] in states else None

        return wait_until(done, timeout, what=f"snapshot {id_or_name} to reach {states}")


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
