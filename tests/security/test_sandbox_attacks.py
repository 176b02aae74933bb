"""The attack suite, sandbox side (issue 9): a static probe compiled here tries each escape
from inside a real sandbox, and host users (`nobody`, and a uid equal to the image's USER)
try to use what sandboxes leave on the host. Each test performs one attack and fails if it
works again."""

import os
import uuid
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig

from harness import API_KEY, BUSYBOX


PROBE_SRC = Path(__file__).with_name("probe.c")
SECRET = "cove-secret-token-4f1d9a"


@pytest.fixture(scope="session")
def probe(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the escape probe")
    out = tmp_path_factory.mktemp("probe") / "probe"
    r = subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(PROBE_SRC)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def run_probe(sandbox, probe):
    sandbox.fs.upload_file(probe, "/tmp/probe")
    r = sandbox.process.exec("chmod 755 /tmp/probe && /tmp/probe")
    assert r.exit_code == 0, r.result
    verdicts = {}
    for line in r.result.splitlines():
        name, verdict, *detail = line.split(" ", 2)
        verdicts[name] = (verdict, detail[0] if detail else "")
    return verdicts


def as_user(uid, *cmd):
    """Runs cmd on the host as uid, with real, effective and saved ids all changed (so no
    capability survives, unlike `setpriv --reuid`, which keeps the saved uid 0)."""

    def drop():
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, preexec_fn=drop, cwd="/")
    except PermissionError as e:  # the exec itself was refused
        return subprocess.CompletedProcess(cmd, 126, "", f"Permission denied: {e}")


def test_every_escape_the_probe_tries_from_inside_a_sandbox_is_blocked(env, probe):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    verdicts = run_probe(sb, probe)
    expected = {
        "add_key", "keyctl_read_host_keyring", "request_key", "unshare_user_mount", "unshare_mount",
        "mount_tmpfs", "mount_cgroup", "open_by_handle_at", "ptrace_agent", "write_proc_1_fd_1",
        "read_proc_1_environ", "write_etc_hosts", "write_etc_resolv", "mknod_mem", "init_module", "iopl",
        "bpf", "perf_event_open", "root_is_host_root",
    }
    assert set(verdicts) == expected, verdicts
    open_ = {k: v for k, v in verdicts.items() if v[0] != "blocked"}
    assert not open_, f"attacks that worked: {open_}"
    sb.delete()


def test_the_probe_in_a_container_engine_sandbox_reaches_nothing_of_the_hosts(env, probe):
    """Engine mode (Docker-in-Docker) grants mounts and namespaces inside the sandbox's own user
    namespace; everything that would reach the host stays blocked."""
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small", labels={"dev.cove.container-engine": "true"}))
    verdicts = run_probe(sb, probe)
    # Everything but the mounts and namespaces below stays blocked, the agent included.
    granted = {"unshare_user_mount", "unshare_mount", "mount_tmpfs", "mount_cgroup"}
    open_ = {k: v for k, v in verdicts.items() if k not in granted and v[0] != "blocked"}
    assert not open_, f"attacks that worked in engine mode: {open_}"
    # What engine mode exists for: mounts and namespaces of its own.
    for g in granted:
        assert verdicts[g][0] != "blocked", (g, verdicts[g])
    sb.delete()


def test_sandbox_root_is_an_unprivileged_host_id_and_its_files_are_not_host_root_owned(env, probe):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    uid_map = sb.process.exec("cat /proc/self/uid_map").result.split()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 65536, uid_map
    sb.process.exec("echo hi > /root/made-by-root")
    upper = server.data_dir / "sandboxes" / sb.id / "disk" / "upper" / "root" / "made-by-root"
    st = upper.stat()
    assert st.st_uid == int(uid_map[1]) and st.st_gid == int(uid_map[1]), (st.st_uid, st.st_gid)
    # A process of the sandbox is an ordinary host process of that uid.
    pid = sb.process.exec("sleep 30 >/dev/null 2>&1 & echo started").result
    assert "started" in pid
    owners = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True).stdout
    assert any(l.split(None, 1)[0] == uid_map[1] and "sleep 30" in l for l in owners.splitlines()), owners
    sb.delete()


def test_a_setuid_root_binary_made_in_a_sandbox_gives_host_user_nobody_nothing(env):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    r = sb.process.exec("cp /bin/busybox /root/rootshell && chmod 4755 /root/rootshell && ls -ln /root/rootshell")
    assert r.exit_code == 0, r.result
    bundle = server.data_dir / "sandboxes" / sb.id
    targets = [bundle / "disk/upper/root/rootshell", bundle / "rootfs/root/rootshell"]
    images = server.data_dir / "images"
    targets += [p / "rootfs/bin/busybox" for p in images.iterdir() if (p / "rootfs/bin/busybox").exists()]
    assert len(targets) >= 3
    for t in targets:
        assert t.exists(), t
        r = as_user(65534, str(t), "id", "-u")
        modes = [(str(a), oct(a.stat().st_mode), a.stat().st_uid, a.stat().st_gid) for a in t.parents]
        assert r.returncode != 0 and "0" != r.stdout.strip(), f"nobody ran {t}: {r.stdout}{r.stderr} {modes}"
        assert "Permission denied" in r.stderr, f"{r.stderr} {modes}"
    # Even for root on the host, the file is not set-uid root: its owner is the sandbox's id.
    st = targets[0].stat()
    assert st.st_mode & stat.S_ISUID and st.st_uid != 0
    mode = stat.S_IMODE(server.data_dir.stat().st_mode)
    assert mode == 0o710, oct(mode)
    sb.delete()


def test_a_host_user_with_the_images_uid_cannot_plant_links_in_a_sandboxs_toolbox_dir(env):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    toolbox = server.data_dir / "sandboxes" / sb.id / "toolbox"
    st = toolbox.stat()
    assert st.st_uid >= 65536, "the toolbox dir must not belong to a uid host users can have"
    for uid in (1000, 65534):
        r = as_user(uid, "ln", "-s", "/etc/shadow", str(toolbox / "env.tmp"))
        assert r.returncode != 0, f"uid {uid} planted a link: {r.stderr}"
    # The server writes the env file without following what the sandbox itself plants there.
    sb.process.exec("ln -sf /etc/shadow /run/cove/env; ln -sf /etc/shadow /run/cove/.env.x")
    assert not (Path("/etc/shadow").stat().st_mode & 0o004)
    sb.delete()


def test_a_sandbox_cannot_fill_the_host_disk_through_the_toolbox_dir_hosts_file_or_the_agents_stdout(env):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    r = sb.process.exec("dd if=/dev/zero of=/run/cove/fill bs=1M count=64 2>&1; rm -f /run/cove/fill")
    assert "No space left" in r.result, r.result
    r = sb.process.exec("dd if=/dev/zero of=/etc/hosts bs=1M count=1 conv=notrunc 2>&1")
    assert r.exit_code != 0 and ("Read-only" in r.result or "Permission denied" in r.result), r.result
    r = sb.process.exec("dd if=/dev/zero of=/proc/1/fd/1 bs=1M count=16 2>&1")
    assert r.exit_code != 0, r.result
    log = server.data_dir / "sandboxes" / sb.id / "log" / "console.log"
    assert log.stat().st_size < 5 << 20
    sb.delete()


def test_a_sandboxs_secret_env_is_in_no_file_a_host_user_can_read(env):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small", env_vars={"SECRET_TOKEN": SECRET}))
    assert sb.process.exec("echo $SECRET_TOKEN").result.strip() == SECRET
    found, world_readable = [], []
    for root, dirs, files in os.walk(server.data_dir):
        if "/rootfs" in root or "/disk" in root:
            dirs.clear()
            continue
        for f in files:
            p = Path(root) / f
            try:
                if p.is_symlink() or not p.is_file() or p.stat().st_size > 64 << 20:
                    continue
                if SECRET.encode() in p.read_bytes():
                    found.append(p)
                    if p.stat().st_mode & 0o044:
                        world_readable.append(p)
            except OSError:
                pass
    assert found, "the secret must be stored somewhere (spec.json, config.json) for restarts"
    assert not world_readable, f"readable by group/others: {world_readable}"
    for p in found:
        r = as_user(65534, "cat", str(p))
        assert r.returncode != 0 and SECRET not in r.stdout, p
    sb.delete()


def build(server, name, dockerfile, **extra):
    st, snap = server.api("POST", "/snapshots", {"name": name, "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": []}, **extra})
    assert st == 200, snap
    return server.wait_state(snap["id"], timeout=180)


def test_build_steps_run_in_the_user_namespace_and_their_set_uid_files_give_host_users_nothing(env):
    server, daytona = env
    snap = build(server, "userns-build", f"FROM {BUSYBOX}\n"
                 "RUN cat /proc/self/uid_map > /uidmap && cp /bin/busybox /rootshell && chmod 4755 /rootshell\n")
    assert snap["state"] == "active", snap
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="userns-build"))
    inside, outside, _ = sb.process.exec("cat /uidmap").result.split()
    assert inside == "0" and int(outside) >= 65536, "the RUN step's root was host root"
    # The layer keeps image ids: the set-uid file is root's inside the image.
    assert sb.process.exec("stat -c %u:%a /rootshell").result.strip() == "0:4755"
    sb.delete()
    # Everything the build left on the host (cache layers, logs, objects) is out of reach.
    leftovers = [p for p in (server.data_dir / "build-cache").rglob("rootshell")]
    assert leftovers, "the step cache keeps the layer dir"
    for p in leftovers + [server.data_dir / "build-logs", server.data_dir / "cove.db"]:
        r = as_user(65534, "cat", str(p)) if p.is_file() else as_user(65534, "ls", str(p))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (p, r.stdout, r.stderr)
    r = as_user(65534, str(leftovers[0]), "id", "-u")
    assert r.returncode != 0, r.stdout


def used_besides_the_disk_pool(server):
    """Bytes used on the data filesystem, less the pool's pre-made disk images: those are
    allocated in full on purpose (each a sandbox's guaranteed space), not a build's leftovers."""
    pool = server.data_dir / "sandboxes" / ".pool"
    pooled = sum(p.stat().st_blocks * 512 for p in pool.glob("*") if p.is_file()) if pool.is_dir() else 0
    return shutil.disk_usage(server.data_dir).used - pooled


def test_a_build_step_writing_past_the_builds_disk_fails_and_costs_the_host_nothing(env):
    server, daytona = env
    before = used_besides_the_disk_pool(server)
    snap = build(server, "filler", f"FROM {BUSYBOX}\nRUN dd if=/dev/zero of=/big bs=1M count=1500\n",
                 cpu=1, memory=1, disk=1)
    assert snap["state"] == "build_failed", snap
    assert "No space left" in (snap.get("errorReason") or ""), snap
    grown = used_besides_the_disk_pool(server) - before
    assert grown < 200 << 20, f"the host disk grew by {grown >> 20} MiB"


def test_links_planted_where_the_server_writes_the_ca_bundle_do_not_make_a_restart_write_outside_the_sandbox(
    cove, tmp_path
):
    marker = uuid.uuid4().hex.upper()
    extra = tmp_path / "extra.pem"
    extra.write_text(f"-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\n")
    server = cove(extra=["--sandbox-ca-bundle", str(extra)])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="small", image=BUSYBOX))
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    bundle, local = "/etc/ssl/certs/ca-certificates.crt", "/usr/local/share/ca-certificates"
    # Control: the extra certificate is in the image's trust store, as regular files.
    r = sb.process.exec(f"test -f {bundle} && ! test -L {bundle} && cat {bundle} {local}/cove-0.crt")
    assert r.exit_code == 0 and r.result.count(marker) == 2, r.result

    host = tmp_path / "host"
    host.mkdir()
    victim = host / "victim.crt"
    victim.write_text("HOST FILE\n")
    os.chmod(tmp_path, 0o755)

    def untouched():
        assert victim.read_text() == "HOST FILE\n", "the server wrote through a planted link"
        assert sorted(p.name for p in host.iterdir()) == ["victim.crt"], "the server wrote into a linked directory"

    # The bundle a link to a host file, the local directory a link to a host directory.
    r = sb.process.exec(f"rm -rf {bundle} {local} && ln -s {victim} {bundle} && ln -s {host} {local} && echo planted")
    assert r.result.strip() == "planted", r.result
    sb.stop()
    sb.start()
    untouched()
    r = sb.process.exec(f"test -f {bundle} && ! test -L {bundle} && cat {bundle}")
    assert r.exit_code == 0 and marker in r.result, "the link was replaced by the merged bundle: " + r.result
    assert sb.process.exec(f"readlink {local}").result.strip() == str(host), "the linked directory was left alone"

    # A parent directory a link to a host directory: nothing written there, the sandbox
    # still starts, with the merged bundle at its own path.
    r = sb.process.exec(f"rm -rf /etc/ssl/certs && ln -s {host} /etc/ssl/certs && echo planted")
    assert r.result.strip() == "planted", r.result
    sb.stop()
    sb.start()
    untouched()
    assert marker in sb.process.exec("cat /etc/cove/ca-certificates.crt").result
    sb.delete()
