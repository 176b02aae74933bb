"""`cove image bootstrap`: a real Debian image built by mmdebstrap on this host (from its apt
sources), stored as cove/sandbox:minimal-<release> in the server's system namespace, and the
general snapshots cove-small/medium/large made of it; then `daytona.create()` with no
parameters (the server's default snapshot cove-small) runs code as `daytona` through both
SDKs. The build is cached under /var/cache/cove/bootstrap, so only the first run on a machine
pays for it (a few minutes). Skipped only when no Debian mirror answers."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig

from harness import API_KEY, COVE_BIN
from tsrun import run_ts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import debimage  # noqa: E402

CACHE = Path("/var/cache/cove/bootstrap")


def host_release():
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    pytest.fail("/etc/os-release names no VERSION_CODENAME")


def mirror_reachable(release):
    """Whether one of the host's apt sources for `release` serves its Release file."""
    for line in debimage.host_mirrors(release):
        words = [w for w in line.split() if not w.startswith("[") and not w.endswith("]")]
        uri, suite = words[1], words[2]
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/dists/{suite}/InRelease", timeout=15) as r:
                if r.status == 200:
                    return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def release():
    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap is not installed: run scripts/setup.sh (make test does)")
    r = host_release()
    if not mirror_reachable(r):
        pytest.skip(f"no Debian mirror of the host's apt sources for {r} is reachable: cannot bootstrap an image")
    return r


def bootstrap(server, *args, timeout=1800):
    env = dict(os.environ, COVE_API_URL=server.api_url, COVE_API_KEY=API_KEY)
    t0 = time.monotonic()
    out = subprocess.run([str(COVE_BIN), "--format", "json", "image", "bootstrap", *args], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout
    return json.loads(out.stdout), out.stderr, time.monotonic() - t0


def test_a_bootstrapped_minimal_image_is_the_default_sandbox_for_both_sdks(cove, release):
    server = cove(extra=["--default-snapshot", "cove-small"])
    first, log, _ = bootstrap(server, "--profile", "minimal", "--general")
    image = first["image"]
    assert image.endswith(f"/cove/sandbox:minimal-{release}"), first
    assert first["pushed"] is True, "a fresh server gets the image"
    assert [(s["name"], s["state"]) for s in first["generalSnapshots"]] == [
        ("cove-small", "active"), ("cove-medium", "active"), ("cove-large", "active")], log
    st, small = server.api("GET", "/snapshots/cove-small")
    assert st == 200 and small["imageName"] == image and small["general"] is True, small
    assert (small["cpu"], small["mem"], small["disk"]) == (1, 1, 3), small

    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    sandbox = daytona.create(timeout=180)
    try:
        def sh(cmd):
            r = sandbox.process.exec(cmd, timeout=120)
            assert r.exit_code == 0, f"{cmd!r} exited {r.exit_code}: {r.result}"
            return r.result.strip()

        r = sandbox.process.code_run("print(1+1)")
        assert r.exit_code == 0 and r.result.strip() == "2", r.result
        assert sh("whoami") == "daytona"
        assert sh("echo $HOME") == "/home/daytona"
        assert sh("pwd") == "/home/daytona"
        assert sh("sudo -n true && sudo -n whoami") == "root", "passwordless sudo"
        assert "python 3" in sh("python -m pip --version")
        assert sh("echo $PIP_BREAK_SYSTEM_PACKAGES") == "1"
        assert sh("ls /usr/lib/python3*/EXTERNALLY-MANAGED 2>/dev/null || echo none") == "none"
        assert sh("touch ~/made && stat -c %U ~/made") == "daytona"
    finally:
        sandbox.delete()

    # Again, as `make run` does at every start: the build and the image are reused.
    again, log, secs = bootstrap(server, "--profile", "minimal", "--general")
    assert again["reusedBuild"] is True and again["pushed"] is False, log
    assert again["digest"] == first["digest"] and "nothing to push" in log, log
    assert "already a general snapshot of this image" in log, log
    assert server.api("GET", "/snapshots/cove-small")[1]["id"] == small["id"], "left alone"
    assert secs < 60, f"a reused bootstrap took {secs:.0f} s"

    r = run_ts("bootstrap_code_run.mjs", server)
    assert (r["exitCode"], r["result"].strip()) == (0, "2"), r
    assert r["who"].split() == ["daytona", "/home/daytona"], r


def test_a_second_server_gets_the_cached_build_without_rebuilding(cove, release):
    server = cove()
    out, log, secs = bootstrap(server, "--profile", "minimal")
    assert out["reusedBuild"] is True and out["pushed"] is True, log
    assert "Reusing the build" in log and out["generalSnapshots"] == [], log
    assert secs < 120, f"a cached bootstrap took {secs:.0f} s"


def test_on_a_server_with_gpus_the_general_snapshots_include_cove_gpu(cove, release, cdi_dir):
    server = cove(extra=["--cdi-spec-dir", str(cdi_dir)])
    out, log, _ = bootstrap(server, "--profile", "minimal", "--general")
    assert [s["name"] for s in out["generalSnapshots"]] == ["cove-small", "cove-medium", "cove-large", "cove-gpu"], log
    st, gpu = server.api("GET", "/snapshots/cove-gpu")
    assert st == 200 and gpu["general"] is True and gpu["gpu"] == 1 and gpu["state"] == "active", gpu
    st, sb = server.api("POST", "/sandbox", {"snapshot": "cove-gpu"})
    assert st == 200 and sb["state"] == "started", sb
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    sandbox = daytona.get(sb["id"])
    r = sandbox.process.exec("test -c /dev/nvidia0 && echo gpu-node; python -c 'print(6*7)'")
    assert r.exit_code == 0 and r.result.split() == ["gpu-node", "42"], r.result
    sandbox.delete()


def test_a_member_key_cannot_bootstrap(cove, release):
    server = cove()
    st, k = server.api("POST", "/api-keys", {"name": "member"})
    assert st == 200, k
    env = dict(os.environ, COVE_API_URL=server.api_url, COVE_API_KEY=k["value"])
    out = subprocess.run([str(COVE_BIN), "image", "bootstrap", "--profile", "minimal"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "admin API key" in out.stderr, out.stderr
    assert "mmdebstrap" not in out.stderr, "refused before building anything"


def cached_profile_with_node(release):
    """`node` or `full` when one of them was bootstrapped on this machine (never built here:
    too slow for make test)."""
    for profile in ("node", "full"):
        if any((d / "image.json").exists() for d in CACHE.glob(f"{profile}-{release}-*")):
            return profile
    return None


def test_node_runs_in_an_image_of_a_profile_with_node_when_one_was_bootstrapped(cove, release):
    profile = cached_profile_with_node(release)
    if profile is None:
        pytest.skip("no node or full image was bootstrapped on this machine (cove image bootstrap --profile full)")
    server = cove()
    out, log, _ = bootstrap(server, "--profile", profile)
    assert out["reusedBuild"] is True, log
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="with-node", image=out["image"]), timeout=600)
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="with-node"), timeout=180)
    try:
        r = sandbox.process.exec("node -e 'console.log(1+1)'", timeout=60)
        assert r.exit_code == 0 and r.result.strip() == "2", r.result
    finally:
        sandbox.delete()


def test_general_snapshots_of_an_older_build_under_the_same_tag_are_re_pinned_in_place_and_spare_running_sandboxes(
        cove, registry, release):
    """What `--force` does to the general snapshots, without paying for a rebuild: an "older
    build" (the busybox fixture) is pushed under the tag first and cove-small/medium/large are
    pinned to it; the bootstrap then pushes the cached build over the tag, as a rebuild does."""
    import threading

    server = cove(extra=["--default-snapshot", "cove-small"])
    st, access = server.api("GET", "/docker-registry/registry-push-access?namespace=cove")
    assert st == 200, access
    host = access["registryUrl"].split("://", 1)[-1]
    image = f"{host}/cove/sandbox:minimal-{release}"
    p = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                        "--dest-creds", f"{access['username']}:{access['secret']}",
                        f"docker://{registry.url.split('://', 1)[1]}/busybox:1", f"docker://{image}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    old = {}
    for name, cpu, mem, disk in [("cove-small", 1, 1, 3), ("cove-medium", 2, 4, 8), ("cove-large", 4, 8, 10)]:
        st, snap = server.api("POST", "/snapshots", {"name": name, "imageName": image, "general": True,
                                                     "cpu": cpu, "memory": mem, "disk": disk})
        assert st == 200, snap
        old[name] = server.wait_state(snap["id"])
        assert old[name]["state"] == "active", old[name]

    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    running = daytona.create(timeout=120)
    assert running.process.exec("cat /etc/cove-fixture").exit_code == 0, "it runs the busybox build"

    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            st, s = server.api("GET", "/snapshots/cove-small")
            seen.append((st, s.get("state") if isinstance(s, dict) else s))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out, log, _ = bootstrap(server, "--profile", "minimal", "--general")
    finally:
        stop.set()
        watcher.join()
    assert out["image"] == image and out["pushed"] is True, log
    assert out["digest"] != old["cove-small"]["ref"], "the cached build is another image than the fixture"
    assert "re-pinning from the older build" in log, log
    for name, before in old.items():
        st, now = server.api("GET", f"/snapshots/{name}")
        assert st == 200 and now["id"] == before["id"] and now["state"] == "active", now
        assert now["ref"] == out["digest"], f"{name} still pins {now['ref']}, not the pushed {out['digest']}"
    assert seen and set(seen) == {(200, "active")}, f"cove-small was missing or not active meanwhile: {set(seen)}"

    fresh = daytona.create(timeout=180)
    try:
        r = fresh.process.code_run("print(1+1)")
        assert r.exit_code == 0 and r.result.strip() == "2", r.result
        # The sandbox of the older build keeps its image, even across a stop and start after
        # the re-pin (its lower layer must not have been collected).
        assert running.process.exec("cat /etc/cove-fixture").exit_code == 0
        running.stop()
        running.start()
        assert running.process.exec("cat /etc/cove-fixture").exit_code == 0, "the old image survived collection"
    finally:
        fresh.delete()
        running.delete()

    again, log, _ = bootstrap(server, "--profile", "minimal", "--general")
    assert "already a general snapshot of this image" in log and "re-pinning" not in log, log
