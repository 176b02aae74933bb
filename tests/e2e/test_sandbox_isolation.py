"""What a sandbox may not do, and the limits it runs under: real runc, real cgroups, real
network namespaces. Each test names the one property it checks."""

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, Resources

from harness import API_KEY, BUSYBOX, wait_until


@pytest.fixture
def env(cove):
    server = cove(extra=["--sandbox-pids-limit", "128"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="small", image=BUSYBOX, resources=Resources(cpu=1, memory=1, disk=1)))
    return server, daytona


def box(daytona, **kw):
    return daytona.create(CreateSandboxFromSnapshotParams(snapshot="small", **kw))


def ip_of(sandbox):
    out = sandbox.process.exec("ip -4 -o addr show eth0").result
    return out.split("inet ")[1].split("/")[0]


def test_a_process_over_the_memory_limit_is_oom_killed_and_the_sandbox_survives(env):
    server, daytona = env
    sb = box(daytona)
    r = sb.process.exec("head -c 1500m /dev/zero | tail > /dev/null")
    assert r.exit_code == 137, r.result
    assert sb.process.exec("echo alive").result == "alive\n"
    sb.delete()


def test_the_cpu_quota_holds_a_busy_loop_to_one_core(env):
    server, daytona = env
    sb = box(daytona)
    cg = next(Path("/sys/fs/cgroup/cpu").glob(f"**/{sb.id}"))
    assert (cg / "cpu.cfs_quota_us").read_text().strip() == "100000"
    acct = next(Path("/sys/fs/cgroup/cpuacct").glob(f"**/{sb.id}")) / "cpuacct.usage"
    before = int(acct.read_text())
    sb.process.exec("for i in 1 2; do (while :; do :; done) & done; sleep 2; kill $(jobs -p)")
    used = (int(acct.read_text()) - before) / 1e9
    assert 0.5 < used < 2.6, f"two busy loops for 2 s under a 1-CPU quota used {used:.2f} CPU-seconds (4 without it)"
    sb.delete()


def test_a_fork_bomb_stops_at_the_pids_limit(env):
    server, daytona = env
    sb = box(daytona)
    r = sb.process.exec("for i in $(seq 300); do sleep 30 & done 2>&1 | tail -1; echo done")
    assert "can't fork" in r.result or "Resource temporarily unavailable" in r.result, r.result
    pids = next(Path("/sys/fs/cgroup/pids").glob(f"**/{sb.id}"))
    assert int((pids / "pids.max").read_text()) == 128
    assert sb.process.exec("pkill sleep; echo ok", timeout=20).exit_code in (0, 1)
    sb.delete()


def test_writing_past_the_disk_size_fails_with_enospc_inside_only(env):
    server, daytona = env
    sb = box(daytona)
    other = box(daytona)
    r = sb.process.exec("dd if=/dev/zero of=/root/fill bs=1M count=1300 2>&1; echo rc=$?")
    assert "No space left on device" in r.result, r.result
    assert other.process.exec("echo fine > /root/ok && cat /root/ok").result == "fine\n"
    assert os.statvfs(server.data_dir).f_bavail > 0
    sb.delete()
    other.delete()


def test_a_sandbox_sees_only_its_own_processes(env):
    server, daytona = env
    sb = box(daytona)
    out = sb.process.exec("ps -o pid,comm").result.splitlines()[1:]
    assert len(out) < 10, out
    assert any(l.split()[0] == "1" and "cove-agent" in l for l in out), out
    sb.delete()


def test_sandboxes_cannot_reach_each_other_but_the_host_reaches_both(env):
    server, daytona = env
    a, b = box(daytona), box(daytona)
    ip_b = ip_of(b)
    # (busybox-static's wget crashes on this machine; nc speaks the HTTP by hand)
    probe = f"(printf 'GET /version HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc -w 2 {{ip}} 2280"
    mine = a.process.exec(probe.format(ip=ip_of(a)))
    assert "200 OK" in mine.result, f"control: a reaches its own agent: {mine.result}"
    r = a.process.exec(probe.format(ip=ip_b) + "; echo rc=$?")
    assert "200 OK" not in r.result, r.result
    with urllib.request.urlopen(f"http://{ip_b}:2280/version", timeout=5) as resp:
        assert resp.status == 200
    a.delete()
    b.delete()


def test_a_sandbox_cannot_mount_load_modules_or_change_the_network(env):
    server, daytona = env
    sb = box(daytona)
    for cmd in ("mount -t tmpfs none /mnt", "insmod /nonexistent.ko", "ip link add dummy0 type dummy", "ip link set eth0 down"):
        r = sb.process.exec(cmd + " 2>&1")
        assert r.exit_code != 0, f"{cmd!r} succeeded: {r.result}"
    assert sb.process.exec("ip link show eth0 | grep -c UP").result.strip() == "1"
    sb.delete()


def test_a_sandbox_cannot_see_the_servers_data_directory(env):
    server, daytona = env
    sb = box(daytona)
    r = sb.process.exec(f"ls {server.data_dir} 2>&1; ls /proc/1/root/{server.data_dir} 2>&1")
    assert "cove.db" not in r.result, r.result
    sb.delete()


def test_uploads_with_dot_dot_stay_inside_the_sandbox(env):
    server, daytona = env
    sb = box(daytona)
    marker = f"cove-escape-{sb.id[:8]}"
    sb.fs.upload_file(b"x", f"../../../../../../tmp/{marker}")
    assert not Path(f"/tmp/{marker}").exists()
    assert sb.process.exec(f"cat /tmp/{marker}").result == "x"
    sb.delete()


def test_the_toolbox_of_another_organization_is_not_reachable(env):
    server, daytona = env
    sb = box(daytona)
    st, org = server.api("POST", "/organizations", {"name": "other"})
    other = org["apiKey"]["value"]
    req = urllib.request.Request(
        f"{server.url}/toolbox/{sb.id}/process/execute",
        data=b'{"command":"id"}',
        method="POST",
        headers={"Authorization": f"Bearer {other}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404
    assert server.api("GET", f"/sandbox/{sb.id}", key=other)[0] == 404
    sb.delete()


def test_sandboxes_keep_running_across_a_server_restart_and_are_adopted(env):
    server, daytona = env
    sb = box(daytona)
    sb.process.exec("echo before > /root/f")
    server.kill()
    server.start()
    wait_until(lambda: server.api("GET", f"/sandbox/{sb.id}")[1]["state"] == "started", 10, what="adoption")
    assert daytona.get(sb.id).process.exec("cat /root/f").result == "before\n"
    daytona.get(sb.id).delete()


def test_a_sandbox_whose_agent_dies_is_reported_as_error(env):
    server, daytona = env
    sb = box(daytona)
    agent_pid = None
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if sb.id in (p / "cgroup").read_text() and (p / "comm").read_text().strip() == "cove-agent":
                    agent_pid = int(p.name)
                    break
            except OSError:
                pass
    assert agent_pid
    os.kill(agent_pid, 9)
    body = wait_until(lambda: (b := server.api("GET", f"/sandbox/{sb.id}")[1])["state"] == "error" and b, 15, what="error state")
    assert "exited" in body["errorReason"] or "killed" in body["errorReason"]
    daytona.get(sb.id).delete()


def test_a_sandbox_cannot_point_the_server_at_a_host_socket(env, short_tmp):
    import socket as pysocket
    import threading

    server, daytona = env
    sb = box(daytona)
    victim_path = short_tmp / "victim.sock"
    victim = pysocket.socket(pysocket.AF_UNIX)
    victim.bind(str(victim_path))
    victim.listen(1)
    victim.settimeout(3)
    got = []

    def watch():
        try:
            got.append(victim.accept())
        except OSError:  # the timeout: nobody connected, as it should be
            pass

    threading.Thread(target=watch, daemon=True).start()
    sb.process.exec(f"rm -f /run/cove/toolbox.sock && ln -s {victim_path} /run/cove/toolbox.sock")
    req = urllib.request.Request(
        f"{server.url}/toolbox/{sb.id}/version", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 503
    assert not got, "the host socket was never connected to"
    victim.close()
