"""Fixtures for end-to-end tests: a real OCI registry (Debian's docker-registry) seeded
with images built from the host's static busybox, and real `cove server` processes. The
images are named `fixtures.cove.test/…` (see tests/fixtures/harness.py), never as Docker
Hub's images."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import mkimage  # noqa: E402
from harness import AGENT_BIN, API_KEY, BUSYBOX, COVE_BIN, FIXTURES, REGIONS, Cove, Registry, free_port, wait_until  # noqa: E402,F401


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is not installed: run scripts/setup.sh (make test does)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    # harness.BUSYBOX, BUSYBOX_2, MULTIARCH, ARM64_ONLY
    mkimage.push_image(reg.url, "busybox", ["1"])
    mkimage.push_image(reg.url, "busybox", ["2"], seed="second")
    mkimage.push_image(reg.url, "multiarch", ["1.0"], index_arches=["arm64", "amd64"])
    mkimage.push_image(reg.url, "arm64-only", ["1.0"], index_arches=["arm64"])
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def big_image(registry):
    """A 48 MiB image: slow enough to kill the server in the middle of its pull."""
    mkimage.push_image(registry.url, "big", ["1.0"], random_mb=48, seed="big")
    return f"{FIXTURES}/big:1.0"


@pytest.fixture
def short_tmp():
    """A short directory: unix socket paths (data dir + 57 characters) must fit in 108 bytes."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    # Sandboxes run as an unprivileged host uid (user namespaces) that must pass through the
    # directories above the data dir; the data dir itself is 0710 (the server makes it so).
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cove(short_tmp, registry):
    for b in (COVE_BIN, AGENT_BIN):
        if not b.exists():
            pytest.fail(f"{b} is missing: build it with `make agent-debug` and `cargo build -p cove` (make test does)")
    servers = []

    def make(extra=(), data_dir=None, docker_hub_mirror=None):
        s = Cove(data_dir or short_tmp / f"d{len(servers)}", registry.url, extra, docker_hub_mirror)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.cleanup()


@pytest.fixture
def server(cove):
    return cove()


@pytest.fixture
def busybox_default(cove):
    """`busybox_default(name)` starts a server whose default snapshot is `name`, made of
    harness.BUSYBOX through the Python SDK, and returns (server, SDK client)."""
    from daytona import CreateSnapshotParams, Daytona, DaytonaConfig

    def start(name):
        server = cove(extra=["--default-snapshot", name])
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        daytona.snapshot.create(CreateSnapshotParams(name=name, image=BUSYBOX))
        return server, daytona

    return start


@pytest.fixture(scope="session")
def registry_with_python(registry):
    """harness.BUSYBOX_PYTHON: busybox with Debian's real python3 in it (for code_run)."""
    mkimage.push_image(registry.url, "busybox-python", ["1"], python=True, seed="python")
    return registry


@pytest.fixture(scope="session")
def trusted_ca(tmp_path_factory):
    """One CA for the whole run, installed once in the system trust store (as `make run` does
    with `cove tls trust`) and removed again at the end."""
    d = tmp_path_factory.mktemp("ca")
    out = subprocess.run([str(COVE_BIN), "tls", "trust", "--data-dir", str(d)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "installed" in out.stdout or "already trusted" in out.stdout, out.stdout
    again = subprocess.run([str(COVE_BIN), "tls", "trust", "--data-dir", str(d)], capture_output=True, text=True)
    assert again.returncode == 0 and "already trusted" in again.stdout, again.stdout + again.stderr
    yield d
    subprocess.run([str(COVE_BIN), "tls", "untrust", "--data-dir", str(d)], capture_output=True)


@pytest.fixture
def s3_cove(cove, trusted_ca, short_tmp):
    """Starts servers whose S3 endpoint's certificate the system trusts (the session's CA);
    takes `cove`'s keyword arguments."""
    made = []

    def make(**kw):
        data = short_tmp / f"s3-{len(made)}"
        (data / "tls").mkdir(parents=True)
        for f in ("ca.pem", "ca.key"):
            shutil.copy2(trusted_ca / "tls" / f, data / "tls" / f)
        made.append(data)
        return cove(data_dir=data, **kw)

    return make


@pytest.fixture
def s3_server(s3_cove):
    return s3_cove()


@pytest.fixture(scope="session")
def debian_image(registry):
    """A real Debian bookworm image (python3, pip, ca-certificates; no PEP 668 marker) built
    by mmdebstrap from this machine's apt mirror, cached under /var/cache/cove-tests, and
    pushed as `fixtures.cove.test/debian-py:bookworm`. `image` is the name a snapshot uses;
    `image_by_digest` pins the same manifest."""
    import debimage

    try:
        digest = debimage.push_debian_image(registry.url, "debian-py", "bookworm")
    except debimage.BuildError as e:
        failure = str(e)  # mmdebstrap's own words, without a chained traceback
    else:
        return {
            "image": f"{FIXTURES}/debian-py:bookworm",
            "image_by_digest": f"{FIXTURES}/debian-py@{digest}",
            "digest": digest,
        }
    pytest.fail(failure, pytrace=False)


CDI_SPEC = """cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {node}
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {node}
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
"""


@pytest.fixture
def cdi_dir():
    """A CDI spec directory with one "GPU": a character device with /dev/null's numbers made
    by the test (root) outside any data dir (no NVIDIA hardware needed)."""
    host = Path(tempfile.mkdtemp(prefix="cvcdi", dir="/tmp"))
    host.chmod(0o711)  # the sandboxes' root passes through to the node
    node = host / "fakegpu0"
    subprocess.run(["mknod", "-m", "666", str(node), "c", "1", "3"], check=True)
    specs = host / "cdi"
    specs.mkdir()
    (specs / "nvidia.yaml").write_text(CDI_SPEC.format(node=node))
    (specs / "nvidia.yaml").chmod(0o644)
    yield specs
    shutil.rmtree(host, ignore_errors=True)


@pytest.fixture
def moto(tmp_path):
    """moto's server with request authentication on: signatures are checked against the IAM
    user's secret, so a wrong SigV4 signature fails the flow. The first five (unsigned)
    requests set up that user and the role to assume."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.fail("moto_server is not installed: run scripts/setup.sh (it installs moto[server] into .venv)")
    import boto3

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "moto.log", "w")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="5")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env)

    def up():
        try:
            urllib.request.urlopen(url + "/moto-api/data.json", timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_until(up, 30, what="moto server")
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="cove-server")
        key = iam.create_access_key(UserName="cove-server")["AccessKey"]
        allow = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        iam.put_user_policy(UserName="cove-server", PolicyName="all", PolicyDocument=allow)
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName="cove-pull", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        iam.put_role_policy(RoleName="cove-pull", PolicyName="ecr", PolicyDocument=allow)
        yield {"url": url, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"], "role": role}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
