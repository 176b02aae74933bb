"""The attack suite, network side (issue 10): what a sandbox must never reach or forge,
whatever its policy. Each test first proves that the target is really there (the host, or a
sandbox that is allowed, reaches it), then that the attacking sandbox does not.

Nothing outside this machine is contacted: the targets are the host's own addresses, other
sandboxes, an address put on the host's loopback for the test (the metadata address), the
host's upstream resolver (a private address on this machine's network) and the server's DNS
forwarder."""

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest

from harness import API_KEY, BUSYBOX_PYTHON
from netprobe import gateway, probe, serve

# A DNS query for pypi.org (id 0x4242, A, IN).
QUERY = bytes.fromhex("424201000001000000000000") + b"\x04pypi\x03org\x00" + bytes.fromhex("00010001")

# Sends QUERY to the gateway's port 53 in a raw IPv4/UDP packet whose source is argv[1]:5353.
SPOOF = """import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
query = bytes.fromhex(sys.argv[3])
udp = struct.pack("!HHHH", 5353, 53, 8 + len(query), 0) + query
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    s.sendto(ip + udp, (dst, 0))
print("sent")
"""

# Waits for one UDP datagram on port 5353 (optionally after sending QUERY itself).
LISTEN = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
s.settimeout(float(sys.argv[1]))
if len(sys.argv) > 2:
    s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 53))
try:
    data, peer = s.recvfrom(4096)
    print("answer", peer[0], data[:2].hex())
except socket.timeout:
    print("nothing")
"""


@pytest.fixture
def net_env(cove, registry_with_python):
    server = cove()
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
    return server, daytona


class HostListener:
    """A TCP listener on the host's 0.0.0.0 that counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.close()


def host_addresses():
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [l.split()[3].split("/")[0] for l in out.splitlines() if " lo " not in l and "127." not in l.split()[3]]


def test_the_host_other_sandboxes_metadata_and_private_networks_are_unreachable(net_env):
    server, daytona = net_env
    listener = HostListener()
    metadata_added = subprocess.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]).returncode == 0
    try:
        a = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
        b = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
        serve(b, 8000)
        b_ip = server.api("GET", f"/sandbox/{b.id}")[1]["ip"]
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection((b_ip, 8000), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the host cannot reach sandbox b's server: the test proves nothing")
        for addr in host_addresses() + (["169.254.169.254"] if metadata_added else []):
            socket.create_connection((addr, listener.port), timeout=2).close()  # the host itself can
            assert probe(a, addr, listener.port).startswith("closed"), f"host address {addr} reachable"
        assert listener.accepted == len(host_addresses()) + int(metadata_added), "only the host's own connects arrived"
        assert probe(a, b_ip, 8000).startswith("closed"), "another sandbox reachable"
        # A private network the host reaches (its own resolver, an RFC 1918 address here).
        upstream = next(
            (l.split()[1] for l in Path("/etc/resolv.conf").read_text().splitlines() if l.startswith("nameserver")),
            None,
        )
        if upstream and not upstream.startswith("127.") and ":" not in upstream:
            socket.create_connection((upstream, 53), timeout=3).close()
            assert probe(a, upstream, 53).startswith("closed"), f"private {upstream} reachable"
        a.delete()
        b.delete()
    finally:
        listener.sock.close()
        if metadata_added:
            subprocess.run(["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"])


def test_a_block_all_sandbox_cannot_forge_a_neighbours_address_to_get_dns_answers_out(net_env):
    server, daytona = net_env
    victim = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
    attacker = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", network_block_all=True))
    victim_ip = server.api("GET", f"/sandbox/{victim.id}")[1]["ip"]
    for s in (victim, attacker):
        s.fs.upload_file(LISTEN.encode(), "/tmp/listen.py")
    attacker.fs.upload_file(SPOOF.encode(), "/tmp/spoof.py")
    # Control: the victim's own query from port 5353 gets an answer from the forwarder.
    own = victim.process.exec(f"python3 /tmp/listen.py 5 {gateway(server)} {QUERY.hex()}", timeout=30).result
    assert own.startswith(f"answer {gateway(server)} 4242"), own
    # The attack: the victim listens, the block_all attacker sends the query under its address.
    victim.process.create_session("listen")
    cmd = victim.process.execute_session_command(
        "listen", SessionExecuteRequest(command="python3 /tmp/listen.py 6", run_async=True)
    )
    time.sleep(1)
    sent = attacker.process.exec(f"python3 /tmp/spoof.py {victim_ip} {gateway(server)} {QUERY.hex()}", timeout=30)
    assert sent.result.strip() == "sent", f"raw sockets work in a sandbox (CAP_NET_RAW): {sent.result}"
    deadline = time.time() + 15
    heard = ""
    while time.time() < deadline and not heard.strip():
        heard = victim.process.get_session_command_logs("listen", cmd.cmd_id).output or ""
        time.sleep(0.5)
    assert heard.strip() == "nothing", f"a forged packet got through: {heard}"
    for s in (victim, attacker):
        s.delete()


def test_another_organization_cannot_link_to_a_sandbox_it_does_not_own_or_change_its_network(net_env):
    server, daytona = net_env
    victim = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", name="victim"))
    st, org = server.api("POST", "/organizations", {"name": "intruders"})
    assert st == 200, org
    other = org["apiKey"]["value"]
    st, snap = server.api("POST", "/snapshots", {"name": "py", "imageName": BUSYBOX_PYTHON}, key=other)
    assert st == 200, snap
    server.wait_state(snap["id"], key=other)
    for ref in ("victim", victim.id):
        st, body = server.api("POST", "/sandbox", {"snapshot": "py", "linkedSandbox": ref}, key=other)
        assert st == 400 and "not found" in body["message"], body
    st, body = server.api("POST", f"/sandbox/{victim.id}/network-settings", {"networkBlockAll": True}, key=other)
    assert st == 404, body
    assert server.api("GET", f"/sandbox/{victim.id}")[1]["networkBlockAll"] is False, "the victim's policy is untouched"
    victim.delete()
