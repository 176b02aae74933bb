"""Docker-in-Docker without a privileged container (issue 17): `cove image bootstrap --profile
docker --general` makes a Debian image with Debian's Docker engine and Compose, and the general
snapshot `cove-docker` in container-engine mode; the seed's walk-through then runs through the
official Python SDK, offline: an image made here from the host's static busybox is uploaded and
`docker load`ed, a Compose project publishes busybox httpd on a port, `curl` reaches it from
inside the sandbox, and `docker compose down` removes it. The host meanwhile sees no new
root process, cgroup outside the sandbox's or network interface outside its namespaces."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, Resources

from harness import API_KEY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bootstrap import bootstrap, release  # noqa: E402,F401  (`release` is a fixture)

COMPOSE = """\
version: "3"
services:
  web:
    image: demo/httpd:1
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    ports:
      - "8080:80"
"""


def tar_bytes(members):
    """A tar of (name, bytes or None for a directory, mode, symlink target or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data, mode, link in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 0
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                t.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def httpd_image_archive():
    """`docker save` format of one image, demo/httpd:1: the host's static busybox, `sh` and
    `httpd` links to it, and /www/index.html."""
    busybox = Path("/bin/busybox").read_bytes()
    layer = tar_bytes([
        ("bin", None, 0o755, None),
        ("bin/busybox", busybox, 0o755, None),
        ("bin/sh", None, 0o777, "busybox"),
        ("bin/httpd", None, 0o777, "busybox"),
        ("www", None, 0o755, None),
        ("www/index.html", b"hello from compose\n", 0o644, None),
    ])
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
    }).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": ["demo/httpd:1"],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    return tar_bytes([
        (f"{layer_id}", None, 0o755, None),
        (f"{layer_id}/layer.tar", layer, 0o644, None),
        (f"{config_id}.json", config, 0o644, None),
        ("manifest.json", manifest, 0o644, None),
    ])


def host_links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def root_pids_named(name):
    """Host pids of processes called `name` that run as host root."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
            uid = next(l.split()[1] for l in (p / "status").read_text().splitlines() if l.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if comm == name and uid == "0":
            found.append(int(p.name))
    return found


@pytest.fixture
def docker_server(cove, release):
    # cove-docker's disks are 10 GiB: sparse here, and no prepared sandboxes holding more.
    server = cove(extra=["--sandbox-disks", "sparse", "--warm-pool-size", "0"])
    out, log, _ = bootstrap(server, "--profile", "docker", "--general")
    assert [(s["name"], s["state"]) for s in out["generalSnapshots"]] == [("cove-docker", "active")], log
    return server


def test_the_seeds_compose_walk_through_runs_in_a_cove_docker_sandbox_without_privileges(docker_server):
    server = docker_server
    st, snap = server.api("GET", "/snapshots/cove-docker")
    assert st == 200 and (snap["cpu"], snap["mem"], snap["disk"]) == (2, 4, 10), snap
    links_before = host_links()
    mounts_before = host_mounts()
    root_dockerds_before = root_pids_named("dockerd")
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    t0 = time.monotonic()
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="cove-docker"), timeout=180)
    try:
        def sh(cmd, timeout=120):
            r = sandbox.process.exec(cmd, timeout=timeout)
            assert r.exit_code == 0, f"{cmd!r} exited {r.exit_code}: {r.result}"
            return r.result.strip()

        deadline = time.monotonic() + 90
        while sandbox.process.exec("docker info --format '{{.ServerVersion}}'", timeout=30).exit_code != 0:
            assert time.monotonic() < deadline, (snap.get("entrypoint"), sh("ps -ef; tail -n 40 /var/log/dockerd.log || true"))
            time.sleep(0.5)
        print(f"create -> docker info answering: {time.monotonic() - t0:.1f} s")
        info = json.loads(sh("docker info --format '{{json .}}'"))
        assert info["Driver"] == "overlay2", info["Driver"]
        assert info["DockerRootDir"] == "/var/lib/docker"

        sandbox.fs.upload_file(httpd_image_archive(), "/root/httpd.tar")
        sandbox.fs.upload_file(COMPOSE.encode(), "/root/demo/docker-compose.yml")
        assert "demo/httpd:1" in sh("docker load -i /root/httpd.tar")
        sh("cd /root/demo && docker compose -p demo up -d", timeout=180)
        ps = sh("cd /root/demo && docker compose -p demo ps")
        assert "demo_web_1" in ps and "Up" in ps, ps
        deadline = time.monotonic() + 30
        while True:
            r = sandbox.process.exec("curl -fsS http://127.0.0.1:8080/", timeout=30)
            if r.exit_code == 0:
                break
            assert time.monotonic() < deadline, r.result
            time.sleep(0.5)
        assert r.result.strip() == "hello from compose"

        # The host: the engine runs as the sandbox's root (a host uid of its range), its
        # interfaces stay in the sandbox's namespaces, its cgroups under the sandbox's.
        assert root_pids_named("dockerd") == root_dockerds_before, "no dockerd runs as host root"
        new_links = host_links() - links_before
        assert new_links and all(n.startswith(server.net["prefix"]) for n in new_links), \
            f"only the server's own sandbox ports are new on the host: {new_links}"
        # The engine's mounts (its layers' overlays, its containers' /proc …) are in the
        # sandbox's mount namespace; the host gained only the sandboxes' own mounts.
        new_mounts = host_mounts() - mounts_before
        stray = {m for m in new_mounts if not m.startswith((str(server.data_dir) + "/", "/run/netns/"))}
        assert not stray, f"mounts of the engine on the host: {stray}"
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            assert not (ctrl / "docker").exists(), f"a cgroup outside the sandbox's: {ctrl / 'docker'}"
        cg = sh("cat /proc/self/cgroup")
        assert "/docker" not in cg

        # The inner container's processes are the sandbox's: under its cgroup on the host.
        inner = host_pids_with_cmdline("httpd -f -p 80")
        assert inner, "the compose service runs"
        for pid in inner:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            assert sandbox.id in cgroups, f"inner container {pid} outside the sandbox's cgroup: {cgroups}"

        # What the engine's extra rights do not reach: the host's kernel settings, devices,
        # modules and the sandbox's own limits; an inner --privileged container is no more.
        for attack in [
            "echo 1 > /proc/sys/vm/drop_caches",
            "echo 5 > /proc/sys/kernel/panic",
            "echo b > /proc/sysrq-trigger",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes && echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes",
            "echo 100000 > /sys/fs/cgroup/pids/pids.max",
            "mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk",
            "grep -q . /proc/kallsyms && awk '$1 != \"0000000000000000\" {found=1} END {exit !found}' /proc/kallsyms",
            "docker run --rm --privileged demo/httpd:1 sh -c 'mknod /dev/x b 8 0 && head -c 1 /dev/x'",
        ]:
            r = sandbox.process.exec(attack, timeout=60)
            assert r.exit_code != 0, f"{attack!r} succeeded in an engine sandbox: {r.result}"
        # (An inner --privileged container is refused outright: the sandbox has no host-only
        # capabilities to hand it.) An inner container's root is the sandbox's, not the host's.
        uid_map = sh("docker run --rm demo/httpd:1 sh -c 'read a b c < /proc/self/uid_map; echo $a $b $c'").split()
        assert uid_map[0] == "0" and uid_map[1] != "0", f"inner root is host root: {uid_map}"

        sh("cd /root/demo && docker compose -p demo down", timeout=120)
        assert "demo_web_1" not in sh("docker ps -a --format '{{.Names}}'")

        # Inner containers die with the sandbox.
        sh("docker run -d --name bg demo/httpd:1 httpd -f -p 81 -h /www")
        assert host_pids_with_cmdline("httpd -f -p 81")
        sandbox.stop()
        assert host_pids_with_cmdline("httpd -f -p 81") == [], "an inner container outlived its sandbox's stop"
    finally:
        sandbox.delete()

    # An inner container is held to the sandbox's memory: in a 1 GiB engine sandbox, one that
    # takes more is killed inside it, and the sandbox goes on.
    daytona.snapshot.create(CreateSnapshotParams(name="docker-1g", image=snap["imageName"],
                                                 resources=Resources(cpu=1, memory=1, disk=10)))
    small = daytona.create(CreateSandboxFromSnapshotParams(snapshot="docker-1g"), timeout=180)
    try:
        deadline = time.monotonic() + 90
        while small.process.exec("docker info >/dev/null", timeout=30).exit_code != 0:
            assert time.monotonic() < deadline, "dockerd did not start in the 1 GiB sandbox"
            time.sleep(0.5)
        small.fs.upload_file(httpd_image_archive(), "/root/httpd.tar")
        assert small.process.exec("docker load -i /root/httpd.tar", timeout=60).exit_code == 0
        # busybox tail keeps a line without end in memory: 1.5 GiB of zeros.
        hog = small.process.exec("docker run --rm demo/httpd:1 sh -c 'head -c 1536m /dev/zero | tail -n 1 >/dev/null'",
                                 timeout=180)
        assert hog.exit_code != 0, f"an inner container used more memory than its sandbox has: {hog.result}"
        assert small.process.exec("echo alive", timeout=30).result.strip() == "alive"
        assert small.process.exec("docker info >/dev/null", timeout=30).exit_code == 0, "the engine survives"
    finally:
        small.delete()


def host_pids_with_cmdline(text):
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(p.name))
            except OSError:
                pass
    return found
