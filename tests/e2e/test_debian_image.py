"""A real Debian image (built by mmdebstrap from the machine's apt mirror, see
tests/fixtures/debimage.py) through the official Daytona Python SDK: pulled from the
registry into a snapshot, started as a sandbox, and its Python, pip and Debian release
checked from inside. No network is needed inside the sandbox."""

from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig
from daytona_api_client.models.snapshot_state import SnapshotState

from harness import API_KEY


def test_a_real_debian_image_runs_python_and_pip_in_a_sandbox(server, debian_image):
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    snap = daytona.snapshot.create(CreateSnapshotParams(name="debian-py", image=debian_image["image"]), timeout=300)
    assert snap.state == SnapshotState.ACTIVE
    assert snap.image_name == debian_image["image"]
    assert snap.size and snap.size > 0
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="debian-py"), timeout=180)
    try:
        def sh(cmd):
            r = sandbox.process.exec(cmd, timeout=120)
            assert r.exit_code == 0, f"{cmd!r} exited {r.exit_code}: {r.result}"
            return r.result.strip()

        assert sh("cat /etc/debian_version").startswith("12."), "not Debian 12 (bookworm)"
        assert sh("python --version").startswith("Python 3.11."), "python-is-python3 missing"
        # Debian's stdlib with its C extensions; ensurepip is not in it (python3-venv has it).
        assert sh('python3 -c "import ssl, sqlite3, venv, json, zlib; print(ssl.OPENSSL_VERSION)"').startswith("OpenSSL 3")
        assert "python 3.11" in sh("python -m pip --version")
        # As in Docker's python images: no PEP 668 marker, and pip is told so as well.
        assert sh("ls /usr/lib/python3*/EXTERNALLY-MANAGED 2>/dev/null || echo none") == "none"
        assert sh("echo $PIP_BREAK_SYSTEM_PACKAGES") == "1"
        assert sh("test -s /etc/ssl/certs/ca-certificates.crt && echo ok") == "ok"
        # Slim: no docs, man pages or apt lists in the image.
        leftovers = "find /usr/share/doc /usr/share/man /var/lib/apt/lists -type f ! -name copyright ! -name lock"
        assert sh(leftovers + " 2>/dev/null | wc -l") == "0"
        r = sandbox.process.code_run("print(1+1)")
        assert r.exit_code == 0, r.result
        assert r.result.strip() == "2"
    finally:
        sandbox.delete()
