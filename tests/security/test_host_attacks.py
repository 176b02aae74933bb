"""The attack suite, host side (issue 9, holes 10 and 11): a sandbox (or a `RUN --network`
build step) tries to reach services the host listens on, the parent cgroup must cap the
processes of all sandboxes together, and an organization must not create past its quota.
Each test performs one attack and fails if it works again."""

import os
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig

from harness import API_KEY, BUSYBOX, free_port, wait_until


class HostListener:
    """A TCP service on the host at 0.0.0.0:<port> that records who connected."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = free_port()
        self.sock.bind(("0.0.0.0", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.peers = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.peers.append(peer[0])
            try:
                conn.sendall(b"host-secret\n")
            finally:
                conn.close()

    def stop(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    l = HostListener()
    yield l
    l.stop()


def gateway(server):
    net, _ = server.net["cidr"].split("/")
    a, b, c, _ = net.split(".")
    return f"{a}.{b}.{c}.1"


def host_addresses():
    """Every IPv4 address of the host except loopback (a sandbox's 127.0.0.1 is its own)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = [l.split("inet ")[1].split("/")[0] for l in out.splitlines() if "inet " in l]
    return [a for a in addrs if not a.startswith("127.")]


def connect_from(sandbox, ip, port):
    r = sandbox.process.exec(f"echo hello | nc -w 2 {ip} {port} 2>&1; echo rc=$?", timeout=30)
    return r.result


def test_a_sandbox_cannot_reach_host_services_on_the_bridge_or_any_host_address(env, listener):
    server, daytona = env
    gw = gateway(server)
    # Control: the host itself reaches the listener on the bridge address, so the attacks
    # below would succeed without the firewall.
    with socket.create_connection((gw, listener.port), timeout=5) as s:
        assert s.recv(100) == b"host-secret\n"
    listener.peers.clear()
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    ip = sb.process.exec("ip -4 -o addr show eth0").result.split("inet ")[1].split("/")[0]
    own = sb.process.exec(f"(printf 'GET /version HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc -w 2 {ip} 2280").result
    assert "200 OK" in own, f"control: the sandbox's network works (its own agent): {own}"
    targets = [gw] + [a for a in host_addresses() if a != gw]
    assert len(targets) >= 2, targets
    for target in targets:
        out = connect_from(sb, target, listener.port)
        assert "host-secret" not in out, f"sandbox reached the host's listener at {target}: {out}"
        assert "rc=0" not in out, f"sandbox connected to {target}:{listener.port}: {out}"
    assert listener.peers == [], f"the host listener accepted connections from {listener.peers}"
    # The host still reaches into the sandbox (replies are allowed back over the bridge).
    with urllib.request.urlopen(f"http://{ip}:2280/version", timeout=5) as resp:
        assert resp.status == 200
    sb.delete()


def test_a_network_build_step_cannot_reach_host_services_either(cove, listener):
    server = cove()
    gw = gateway(server)
    dockerfile = (
        f"FROM {BUSYBOX}\n"
        f"RUN --network=default ip -4 -o addr show eth0 > /net; (echo hi | nc -w 2 {gw} {listener.port} > /got 2>&1); echo rc=$? >> /got\n"
    )
    st, snap = server.api("POST", "/snapshots", {"name": "netstep", "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": []}})
    assert st == 200, snap
    done = server.wait_state(snap["id"], timeout=180)
    assert done["state"] == "active", done
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="netstep"))
    assert "inet " in sb.process.exec("cat /net").result, "control: the step had an address on the bridge"
    got = sb.process.exec("cat /got").result
    assert "host-secret" not in got and "rc=0" not in got, got
    assert listener.peers == [], f"the host listener accepted connections from {listener.peers}"
    sb.delete()


def test_the_firewall_table_is_the_servers_own_and_survives_a_restart_without_duplicates(cove):
    server = cove()
    table = f"cove_{server.net['bridge']}"

    def listing(family):
        out = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    before = listing("inet")
    for rule in ("masquerade", 'iifname "%s" drop' % server.net["bridge"], "@blocked drop", "@policies"):
        assert rule in before, f"{rule!r} missing:\n{before}"
    spoof = listing("bridge")
    assert "@ports accept" in spoof and spoof.rstrip().count("drop") >= 1, spoof
    server.kill()
    server.start()
    assert listing("inet") == before, "a restart replaces the table: the same rules, once"
    assert listing("bridge").count("@ports accept") == spoof.count("@ports accept")


def test_a_clean_stop_with_no_sandbox_running_removes_the_servers_tables_and_leaves_other_tables(cove, registry):
    server = cove()
    table = f"cove_{server.net['bridge']}"
    other = f"cove_test_other_{os.getpid()}"

    def tables():
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return set(out.stdout.split("\n"))

    assert {f"table inet {table}", f"table bridge {table}"} <= tables(), "control: the server made its tables"
    # Another program's table (named like ours, to show nothing is removed by prefix).
    subprocess.run(["nft", "add", "table", "inet", other], check=True)
    try:
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        daytona.snapshot.create(CreateSnapshotParams(name="small", image=BUSYBOX))
        daytona.create(CreateSandboxFromSnapshotParams(snapshot="small")).delete()
        server.kill(signal.SIGTERM)
        assert server.proc.returncode == 0, f"not a clean stop: exit {server.proc.returncode}"
        left = tables()
        assert f"table inet {table}" not in left and f"table bridge {table}" not in left, sorted(left)
        assert f"table inet {other}" in left, "another table was touched"
    finally:
        subprocess.run(["nft", "delete", "table", "inet", other], capture_output=True)


def test_the_parent_cgroup_caps_the_processes_of_all_sandboxes_together(env):
    server, daytona = env
    sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    rel = server.net["cgroup"].lstrip("/")
    v1 = Path("/sys/fs/cgroup/pids") / rel
    parent = v1 if v1.is_dir() else Path("/sys/fs/cgroup") / rel
    value = (parent / "pids.max").read_text().strip()
    assert value != "max", "the parent cgroup has no process limit"
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert int(value) == pid_max // 2, value
    # The sandbox's own cgroup is below it, so the limit covers it.
    assert any(parent.glob(f"**/{sb.id}")), f"sandbox {sb.id} is not under {parent}"
    sb.delete()


def test_an_organization_cannot_create_past_its_quota_and_only_admins_change_it(cove):
    server = cove()
    st, org = server.api("POST", "/organizations", {"name": "limited"})
    assert st == 200, org
    org_id, key = org["id"], org["apiKey"]["value"]

    st, body = server.api("PUT", f"/organizations/{org_id}/quota", {"sandboxes": 100}, key=key)
    assert st == 403, body
    assert "admin" in body["message"], body
    st, body = server.api("PUT", f"/organizations/{org_id}/quota", {"sandboxes": 1, "gpus": 1})
    assert st == 400 and "gpus" in body["message"], body
    st, body = server.api("PUT", f"/organizations/{org_id}/quota", {"sandboxes": 1})
    assert st == 200 and body["sandboxes"] == 1, body

    st, snap = server.api("POST", "/snapshots", {"name": "small", "imageName": BUSYBOX}, key=key)
    assert st == 200, snap
    assert server.wait_state(snap["id"], key=key)["state"] == "active"
    st, first = server.api("POST", "/sandbox", {"snapshot": "small"}, key=key)
    assert st == 200 and first["state"] == "started", first
    st, body = server.api("POST", "/sandbox", {"snapshot": "small"}, key=key)
    assert st == 403, body
    assert "organization quota exceeded: sandboxes 1 of 1 in use" in body["message"], body
    st, q = server.api("GET", f"/organizations/{org_id}/quota", key=key)
    assert st == 200 and q["used"]["sandboxes"] == 1, q

    # The admin's own organization is not held by another organization's quota.
    st, snap = server.api("POST", "/snapshots", {"name": "small", "imageName": BUSYBOX})
    assert st == 200, snap
    server.wait_state(snap["id"])
    st, mine = server.api("POST", "/sandbox", {"snapshot": "small"})
    assert st == 200, mine

    # Deleting frees the quota.
    assert server.api("DELETE", f"/sandbox/{first['id']}", key=key)[0] in (200, 204)
    wait_until(lambda: server.api("GET", f"/organizations/{org_id}/quota", key=key)[1]["used"]["sandboxes"] == 0, 30,
               what="the deleted sandbox to leave the quota")
    st, again = server.api("POST", "/sandbox", {"snapshot": "small"}, key=key)
    assert st == 200, again
    for sid, k in ((again["id"], key), (mine["id"], API_KEY)):
        server.api("DELETE", f"/sandbox/{sid}", key=k)
